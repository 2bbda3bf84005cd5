//! Ogg pages (RFC 3533) for one logical stream: the header, the lacing values and the CRC-32.
//! Each page holds whole packets only, so that every page is a place a listener can start.

use bytes::Bytes;

/// Most lacing values a page can hold.
pub const MAX_SEGMENTS: usize = 255;

/// Writes the pages of one logical bitstream: numbers them and marks the first and last.
pub struct OggWriter {
    serial: u32,
    sequence: u32,
}

impl OggWriter {
    pub fn new(serial: u32) -> OggWriter {
        OggWriter {
            serial,
            sequence: 0,
        }
    }

    /// One page holding `packets`, whole, whose last packet ends at `granule`. At most
    /// [`MAX_SEGMENTS`] lacing values in all (see [`segments`]).
    pub fn page(&mut self, packets: &[&[u8]], granule: u64, last: bool) -> Bytes {
        let lacing_len: usize = packets.iter().map(|p| segments(p.len())).sum();
        assert!(lacing_len <= MAX_SEGMENTS, "too many packets for one page");
        let data_len: usize = packets.iter().map(|p| p.len()).sum();
        let mut page = Vec::with_capacity(27 + lacing_len + data_len);
        page.extend_from_slice(b"OggS");
        page.push(0); // version
        let mut flags = 0u8;
        if self.sequence == 0 {
            flags |= 0x02; // beginning of stream
        }
        if last {
            flags |= 0x04; // end of stream
        }
        page.push(flags);
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled in below
        page.push(lacing_len as u8);
        for packet in packets {
            page.extend(std::iter::repeat_n(255u8, packet.len() / 255));
            page.push((packet.len() % 255) as u8);
        }
        for packet in packets {
            page.extend_from_slice(packet);
        }
        let crc = crc32(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        Bytes::from(page)
    }
}

/// Lacing values a packet of `len` bytes takes.
pub fn segments(len: usize) -> usize {
    len / 255 + 1
}

/// Ogg's CRC-32: polynomial 0x04C11DB7, initial value 0, no reflection, no final XOR.
fn crc32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |crc, &byte| {
        (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ byte) as usize]
    })
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_catalogue() {
        // Ogg's CRC is CRC-32/CKSUM's (check value 0x765E7680) without its final XOR.
        assert_eq!(crc32(b"123456789"), 0x765E_7680 ^ 0xFFFF_FFFF);
    }

    #[test]
    fn pages_are_numbered_laced_and_checksummed() {
        let mut writer = OggWriter::new(0x1234_5678);
        let long = vec![7u8; 600];
        let first = writer.page(&[b"OpusHead"], 0, false);
        let second = writer.page(&[&long, b"xy"], 960, true);
        assert_eq!(&first[..4], b"OggS");
        assert_eq!(first[5], 0x02, "beginning of stream");
        assert_eq!(second[5], 0x04, "end of stream");
        assert_eq!(u64::from_le_bytes(second[6..14].try_into().unwrap()), 960);
        assert_eq!(&second[14..18], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&second[18..22], &1u32.to_le_bytes(), "sequence number");
        // 600 = 255 + 255 + 90, then 2.
        assert_eq!(&second[26..31], &[4, 255, 255, 90, 2]);
        assert_eq!(second.len(), 27 + 4 + 602);
        let mut zeroed = second.to_vec();
        zeroed[22..26].fill(0);
        assert_eq!(&second[22..26], &crc32(&zeroed).to_le_bytes());
    }
}
