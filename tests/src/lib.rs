//! Lab code.
