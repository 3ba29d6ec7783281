//! PLACEHOLDER (helper "engine" writes the real codec; dropped at merge).

/// Largest DHCP datagram the rack reads; longer ones are dropped unparsed.
pub const MAX_PACKET: usize = 1500;
