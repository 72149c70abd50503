//! codepipeline
