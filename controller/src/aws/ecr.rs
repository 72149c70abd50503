//! ecr
