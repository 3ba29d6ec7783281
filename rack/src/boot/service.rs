//! (being written for issue 11)
