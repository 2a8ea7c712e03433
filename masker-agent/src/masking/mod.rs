//! The masking engine: what to do with each cell of a result.
