//! The pcapng file format (draft-ietf-opsawg-pcapng), as far as `kemu capture` writes it: one
//! Section Header Block, one Interface Description Block per capture point (`if_name` is
//! `host:dev`, timestamps in nanoseconds), then Enhanced Packet Blocks with the direction the
//! packet went. Little-endian, as written on this machine. Pure: blocks are byte vectors.

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u16 = 1;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const EPB: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// Which way a packet went on its interface (`epb_flags` bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

fn pad4(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
}

fn option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    pad4(out);
}

fn end_of_options(out: &mut Vec<u8>) {
    out.extend_from_slice(&OPT_END.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
}

/// A block: type, total length, body, total length again.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let total = (12 + body.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_le_bytes());
    out
}

/// The Section Header Block that starts the file.
pub fn section_header(application: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    // Section length unknown: the file is written as packets come.
    body.extend_from_slice(&(-1i64).to_le_bytes());
    option(&mut body, SHB_USERAPPL, application.as_bytes());
    end_of_options(&mut body);
    block(SHB, &body)
}

/// An Interface Description Block named `name`, timestamps in nanoseconds.
pub fn interface(name: &str, link_type: u16, snap_len: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&link_type.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&snap_len.to_le_bytes());
    option(&mut body, IF_NAME, name.as_bytes());
    option(&mut body, IF_TSRESOL, &[9]);
    end_of_options(&mut body);
    block(IDB, &body)
}

/// An Enhanced Packet Block: `data` (maybe cut short) of a packet of `original_len` bytes
/// seen on interface `interface_id` at `ns` nanoseconds since the epoch.
pub fn packet(
    interface_id: u32,
    ns: u64,
    data: &[u8],
    original_len: u32,
    direction: Direction,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + data.len());
    body.extend_from_slice(&interface_id.to_le_bytes());
    body.extend_from_slice(&((ns >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ns as u32).to_le_bytes());
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(&original_len.to_le_bytes());
    body.extend_from_slice(data);
    pad4(&mut body);
    let flags: u32 = match direction {
        Direction::Inbound => 1,
        Direction::Outbound => 2,
    };
    option(&mut body, EPB_FLAGS, &flags.to_le_bytes());
    end_of_options(&mut body);
    block(EPB, &body)
}

/// A block read back: its type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub kind: u32,
    pub body: Vec<u8>,
}

/// Split a little-endian pcapng byte stream into its blocks (for tests and `kemu` itself
/// reading a capture back); `None` when a length does not add up.
pub fn blocks(mut bytes: &[u8]) -> Option<Vec<Block>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let kind = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        if len < 12 || !len.is_multiple_of(4) || len > bytes.len() {
            return None;
        }
        let trailer = u32::from_le_bytes(bytes.get(len - 4..len)?.try_into().ok()?) as usize;
        if trailer != len {
            return None;
        }
        out.push(Block {
            kind,
            body: bytes[8..len - 4].to_vec(),
        });
        bytes = &bytes[len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn hex(bytes: &[u8]) -> String {
        let mut out = String::new();
        for (i, chunk) in bytes.chunks(16).enumerate() {
            let _ = write!(out, "{:04x} ", i * 16);
            for b in chunk {
                let _ = write!(out, " {b:02x}");
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn a_file_is_a_section_interfaces_and_packets() {
        let mut file = section_header("kemu");
        file.extend(interface("192.168.0.202:eth0", LINKTYPE_ETHERNET, 262144));
        let frame: Vec<u8> = (0u8..42).collect();
        file.extend(packet(
            0,
            1_764_931_200_123_456_789,
            &frame,
            60,
            Direction::Outbound,
        ));
        let blocks = blocks(&file).unwrap();
        assert_eq!(
            blocks.iter().map(|b| b.kind).collect::<Vec<_>>(),
            [SHB, IDB, EPB]
        );
        crate::testing::snapshot_settings().bind(|| insta::assert_snapshot!(hex(&file)));
        // A cut file does not parse.
        assert!(super::blocks(&file[..file.len() - 3]).is_none());
    }
}
