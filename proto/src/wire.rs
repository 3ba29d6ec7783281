//! Hand-written wire types where the generated ones would cost too much.
//!
//! [`ListMachinesResponse`] has the exact wire format of `ingot.v1.ListMachinesResponse` (clients decode it
//! as usual), plus `encoded_machines`: machines already encoded (the region keeps each machine's basic view
//! encoded, refreshed when the machine changes), written out as field 1 byte for byte. A list of 10,000
//! machines then costs the server a copy instead of 10,000 conversions and encodings.

use crate::v1::Machine;
use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

/// `ingot.v1.ListMachinesResponse`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListMachinesResponse {
    /// The page (field 1).
    pub machines: Vec<Machine>,
    /// Empty when this is the last page (field 2).
    pub next_page_token: String,
    /// Number of machines matching the filter across all pages (field 3).
    pub total_size: u64,
    /// The cluster revision this page was read at (field 4).
    pub revision: u64,
    /// Server side only: machines already encoded as `ingot.v1.Machine`, sent as more field-1 entries
    /// after `machines`. A decoded response always has this empty (everything lands in `machines`).
    pub encoded_machines: Vec<Bytes>,
}

impl prost::Message for ListMachinesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for m in &self.machines {
            encoding::message::encode(1, m, buf);
        }
        for b in &self.encoded_machines {
            encoding::encode_key(1, WireType::LengthDelimited, buf);
            encoding::encode_varint(b.len() as u64, buf);
            buf.put_slice(b);
        }
        if !self.next_page_token.is_empty() {
            encoding::string::encode(2, &self.next_page_token, buf);
        }
        if self.total_size != 0 {
            encoding::uint64::encode(3, &self.total_size, buf);
        }
        if self.revision != 0 {
            encoding::uint64::encode(4, &self.revision, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge_repeated(wire_type, &mut self.machines, buf, ctx),
            2 => encoding::string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            3 => encoding::uint64::merge(wire_type, &mut self.total_size, buf, ctx),
            4 => encoding::uint64::merge(wire_type, &mut self.revision, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let mut n = encoding::message::encoded_len_repeated(1, &self.machines);
        n += self
            .encoded_machines
            .iter()
            .map(|b| encoding::key_len(1) + encoding::encoded_len_varint(b.len() as u64) + b.len())
            .sum::<usize>();
        if !self.next_page_token.is_empty() {
            n += encoding::string::encoded_len(2, &self.next_page_token);
        }
        if self.total_size != 0 {
            n += encoding::uint64::encoded_len(3, &self.total_size);
        }
        if self.revision != 0 {
            n += encoding::uint64::encoded_len(4, &self.revision);
        }
        n
    }

    fn clear(&mut self) {
        *self = ListMachinesResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn pre_encoded_machines_decode_like_plain_ones() {
        let m = |id: &str| Machine {
            system_id: id.into(),
            hostname: format!("h-{id}"),
            revision: 7,
            ..Default::default()
        };
        let sent = ListMachinesResponse {
            machines: vec![m("a")],
            encoded_machines: vec![
                Bytes::from(m("b").encode_to_vec()),
                Bytes::from(m("c").encode_to_vec()),
            ],
            next_page_token: "tok".into(),
            total_size: 3,
            revision: 42,
        };
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let got = ListMachinesResponse::decode(bytes.as_slice()).expect("decode");
        assert_eq!(got.machines, vec![m("a"), m("b"), m("c")]);
        assert_eq!(
            (got.next_page_token.as_str(), got.total_size, got.revision),
            ("tok", 3, 42)
        );
        assert!(got.encoded_machines.is_empty());
    }
}
