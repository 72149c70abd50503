//! cloudformation
