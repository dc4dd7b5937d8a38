//! Binary tests.
