//! conversions (filled below)
