//! Backup files: every tree of the database in one gzip'd stream.
//!
//! Room: the cellar's copying desk. Only [`super::Store`] calls it. The
//! layout is ours and versioned: a first line `yihaotong-backup 1`, then
//! frames (a tree's name; a key and its value; an end frame with the number
//! of entries), all inside gzip, whose CRC and length catch a damaged or cut
//! file. Reading checks everything before anything is restored.

use std::io::{Read, Write};

use anyhow::{bail, Context};

const MAGIC: &[u8] = b"yihaotong-backup 1\n";
const TREE: u8 = 1;
const ENTRY: u8 = 2;
const END: u8 = 3;
/// No key or value we write comes near this; a bigger length is damage.
const MAX_LEN: u32 = 64 << 20;

/// Writes a backup stream.
pub struct Writer<W: Write> {
    gz: flate2::write::GzEncoder<W>,
    entries: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a backup on `out`.
    pub fn new(out: W) -> anyhow::Result<Writer<W>> {
        let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        gz.write_all(MAGIC)?;
        Ok(Writer { gz, entries: 0 })
    }

    /// Starts the entries of tree `name`.
    pub fn tree(&mut self, name: &str) -> anyhow::Result<()> {
        self.gz.write_all(&[TREE])?;
        self.bytes(name.as_bytes())
    }

    /// One entry of the current tree.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.gz.write_all(&[ENTRY])?;
        self.bytes(key)?;
        self.bytes(value)?;
        self.entries += 1;
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(b.len()).ok().filter(|l| *l <= MAX_LEN);
        let Some(len) = len else {
            bail!("an entry of {} bytes is too large to back up", b.len());
        };
        self.gz.write_all(&len.to_be_bytes())?;
        self.gz.write_all(b)?;
        Ok(())
    }

    /// Ends the backup; returns the stream and how many entries it holds.
    pub fn finish(mut self) -> anyhow::Result<(W, u64)> {
        self.gz.write_all(&[END])?;
        self.gz.write_all(&self.entries.to_be_bytes())?;
        Ok((self.gz.finish()?, self.entries))
    }
}

/// What a backup holds, read back in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// The entries that follow belong to this tree.
    Tree(String),
    /// One key and value.
    Entry(Vec<u8>, Vec<u8>),
}

/// Reads a backup stream, checking it as it goes; [`Reader::next_item`]
/// returns `None` only after a whole, intact backup.
pub struct Reader<R: Read> {
    gz: flate2::read::GzDecoder<R>,
    entries: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Opens a backup stream; refused when it is not one of ours.
    pub fn new(input: R) -> anyhow::Result<Reader<R>> {
        let mut gz = flate2::read::GzDecoder::new(input);
        let mut magic = [0u8; MAGIC.len()];
        gz.read_exact(&mut magic)
            .context("not a yihaotong backup (not gzip, or too short)")?;
        if magic != MAGIC {
            bail!("not a yihaotong backup, or one of a later version (its first line is not \"yihaotong-backup 1\")");
        }
        Ok(Reader {
            gz,
            entries: 0,
            done: false,
        })
    }

    /// The next item, or `None` at a checked end.
    pub fn next_item(&mut self) -> anyhow::Result<Option<Item>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.gz
            .read_exact(&mut tag)
            .context("the backup is cut short (no end mark)")?;
        match tag[0] {
            TREE => {
                let name = String::from_utf8(self.bytes()?).context("a tree name is not UTF-8")?;
                Ok(Some(Item::Tree(name)))
            }
            ENTRY => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                self.entries += 1;
                Ok(Some(Item::Entry(key, value)))
            }
            END => {
                let mut n = [0u8; 8];
                self.gz
                    .read_exact(&mut n)
                    .context("the backup is cut short in its end mark")?;
                let said = u64::from_be_bytes(n);
                if said != self.entries {
                    bail!(
                        "the backup is damaged: its end mark counts {said} entries, {} were read",
                        self.entries
                    );
                }
                // The gzip trailer (CRC, length) is checked at its EOF.
                let mut rest = Vec::new();
                self.gz
                    .read_to_end(&mut rest)
                    .context("the backup is damaged (gzip check failed)")?;
                if !rest.is_empty() {
                    bail!(
                        "the backup is damaged: {} bytes after its end mark",
                        rest.len()
                    );
                }
                self.done = true;
                Ok(None)
            }
            other => bail!(
                "the backup is damaged: unknown frame {other} after {} entries",
                self.entries
            ),
        }
    }

    fn bytes(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.gz
            .read_exact(&mut len)
            .context("the backup is cut short")?;
        let len = u32::from_be_bytes(len);
        if len > MAX_LEN {
            bail!("the backup is damaged: an entry claims {len} bytes");
        }
        let mut b = vec![0u8; len as usize];
        self.gz
            .read_exact(&mut b)
            .context("the backup is cut short")?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).expect("writer");
        w.tree("agents").expect("tree");
        w.entry(b"1001", b"{}").expect("entry");
        w.tree("cdrs").expect("tree");
        w.entry(&[0, 1, 2], &[]).expect("entry");
        let (bytes, n) = w.finish().expect("finish");
        assert_eq!(n, 2);
        bytes
    }

    fn read_all(bytes: &[u8]) -> anyhow::Result<Vec<Item>> {
        let mut r = Reader::new(bytes)?;
        let mut items = Vec::new();
        while let Some(item) = r.next_item()? {
            items.push(item);
        }
        Ok(items)
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let items = read_all(&sample()).expect("read");
        assert_eq!(
            items,
            vec![
                Item::Tree("agents".into()),
                Item::Entry(b"1001".to_vec(), b"{}".to_vec()),
                Item::Tree("cdrs".into()),
                Item::Entry(vec![0, 1, 2], vec![]),
            ]
        );
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            // A flipped bit in the gzip header's flags or mtime may leave
            // the data intact; what is read is then still the whole backup.
            if let Ok(items) = read_all(&bad) {
                assert_eq!(items, read_all(&bytes).expect("good"), "byte {i}");
            }
        }
        assert!(read_all(b"hello").is_err());
    }
}
