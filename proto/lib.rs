//! placeholder replaced by the generated wire types
