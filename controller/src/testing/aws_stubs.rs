//! Scripted stub servers speaking AWS wire protocols for what moto cannot produce.
