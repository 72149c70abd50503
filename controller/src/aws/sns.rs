//! sns
