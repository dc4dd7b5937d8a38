//! Library tests.
