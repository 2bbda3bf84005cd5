//! The bit-level writing FLAC frames need: an MSB-first bit writer, Rice codes, and the two
//! frame checksums (CRC-8 over the header, CRC-16 over the whole frame).

/// Writes bits most significant first into a byte vector.
pub struct BitWriter {
    bytes: Vec<u8>,
    /// Bits not yet written out, right-aligned in the low `pending_bits` bits.
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> BitWriter {
        BitWriter {
            bytes: Vec::with_capacity(bytes),
            pending: 0,
            pending_bits: 0,
        }
    }

    /// Writes the low `bits` bits of `value` (at most 32).
    pub fn write(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32);
        if bits == 0 {
            return;
        }
        let value = u64::from(value) & ((1u64 << bits) - 1);
        self.pending = (self.pending << bits) | value;
        self.pending_bits += bits;
        while self.pending_bits >= 8 {
            self.pending_bits -= 8;
            self.bytes.push((self.pending >> self.pending_bits) as u8);
        }
        // Keep only the unwritten bits, so that the shift above never overflows.
        self.pending &= (1u64 << self.pending_bits) - 1;
    }

    /// Writes the low `bits` bits of a signed value, two's complement.
    pub fn write_signed(&mut self, value: i32, bits: u32) {
        self.write(value as u32, bits);
    }

    /// Writes `zeros` zero bits then a one: the unary part of a Rice code.
    pub fn write_unary(&mut self, mut zeros: u32) {
        while zeros >= 32 {
            self.write(0, 32);
            zeros -= 32;
        }
        self.write(1, zeros + 1);
    }

    /// Writes `value` as a Rice code with parameter `k`, after folding it to unsigned
    /// (0, -1, 1, -2, … → 0, 1, 2, 3, …).
    pub fn write_rice(&mut self, value: i32, k: u32) {
        let folded = fold(value);
        self.write_unary((folded >> k) as u32);
        self.write((folded & ((1u64 << k) - 1)) as u32, k);
    }

    /// Pads with zero bits to the next byte boundary.
    pub fn align(&mut self) {
        if self.pending_bits > 0 {
            self.write(0, 8 - self.pending_bits);
        }
    }

    /// Bytes written so far (whole bytes only).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        self.align();
        self.bytes
    }
}

/// Folds a signed residual to the unsigned value a Rice code carries.
pub fn fold(value: i32) -> u64 {
    if value >= 0 {
        2 * value as u64
    } else {
        2 * u64::from(value.unsigned_abs()) - 1
    }
}

/// CRC-8, polynomial x^8 + x^2 + x + 1, initial value 0: the frame header's checksum.
pub fn crc8(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |crc, &byte| {
        let mut crc = crc ^ byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// CRC-16, polynomial x^16 + x^15 + x^2 + 1, initial value 0: the whole frame's checksum.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| {
        let mut crc = crc ^ (u16::from(byte) << 8);
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x8005
            } else {
                crc << 1
            };
        }
        crc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_written_most_significant_first() {
        let mut w = BitWriter::with_capacity(8);
        w.write(0b101, 3);
        w.write(0b11111, 5);
        w.write(0xABCD, 16);
        w.write_signed(-1, 4);
        w.write(0, 32);
        assert_eq!(w.into_bytes(), [0b1011_1111, 0xAB, 0xCD, 0xF0, 0, 0, 0, 0]);
    }

    #[test]
    fn rice_codes_fold_the_sign() {
        assert_eq!([0, -1, 1, -2, 2].map(fold), [0, 1, 2, 3, 4]);
        assert_eq!(fold(i32::MIN), u64::from(u32::MAX));
        // -3 folds to 5 = 0b101; k = 1: quotient 2 (two zeros, a one), remainder 1.
        let mut w = BitWriter::with_capacity(1);
        w.write_rice(-3, 1);
        assert_eq!(w.into_bytes(), [0b0011_0000]);
        // A long unary run crosses the 32-bit chunks.
        let mut w = BitWriter::with_capacity(8);
        w.write_unary(40);
        assert_eq!(w.into_bytes(), [0, 0, 0, 0, 0, 0x80]);
    }

    #[test]
    fn checksums_match_the_catalogue() {
        // CRC-8/SMBUS and CRC-16/UMTS (the FLAC parameters) of "123456789".
        assert_eq!(crc8(b"123456789"), 0xF4);
        assert_eq!(crc16(b"123456789"), 0xFEE8);
    }
}
