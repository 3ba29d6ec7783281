//! Flow tests: the whole agent against a scripted fake rack and a fake machine, and one against a real
//! HTTPS server holding a rack certificate.
