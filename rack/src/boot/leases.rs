//! PLACEHOLDER (helper "engine" writes the real lease table; dropped at merge).
