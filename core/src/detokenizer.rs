//! Streaming detokenization: turn generated ids into text one id at a time.
//!
//! Text is produced WITHOUT skipping special tokens, as mlx-lm's streaming detokenizers do (their
//! token maps hold every id's piece, and the naive one calls `decode` with its default
//! `skip_special_tokens=False`). The invariant is therefore
//! `concat(push(id)...) + finish() == tokenizer.decode(ids, false)`. Two mlx-lm quirks are not
//! copied, because they break that invariant: its BPE detokenizer drops a leading space from the
//! first piece of byte-level (GPT-2 style) output, and its naive detokenizer for other decoders
//! drops a trailing space before `clean_up_tokenization_spaces`.
//!
//! Method (text-generation-inference's `decode_token`): decode a small window
//! `ids[prefix_offset..]` and subtract the text of `ids[prefix_offset..read_offset]`, so each
//! step costs O(window), not O(history). Starting the window one chunk back keeps decoders that
//! strip the first piece's leading space (SentencePiece "▁word") from eating a real space.
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Held-back ids beyond which a window whose text ends in U+FFFD is split, so a run of
/// malformed bytes cannot stall the stream (and make each step re-decode a growing window).
const STALL_LIMIT: usize = 8;
/// A UTF-8 sequence spans at most 4 bytes, so an incomplete one at a cut point is settled by
/// the ids after it once there are this many.
const SETTLE: usize = 4;

pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    /// Ids from `prefix_offset` (absolute position `base`) on; older ids are dropped.
    ids: Vec<u32>,
    /// Window start: text of `ids[..read]` has been emitted, and `ids[..prefix]` is not decoded again.
    prefix: usize,
    read: usize,
}

impl<'a> StreamDecoder<'a> {
    pub(crate) fn new(tokenizer: &'a Tokenizer) -> Self {
        StreamDecoder { tokenizer, ids: Vec::new(), prefix: 0, read: 0 }
    }

    /// Feed one generated token id; returns the new text that is now final (possibly empty).
    ///
    /// Pieces are always whole UTF-8 characters: incomplete multi-byte sequences are held back
    /// (a trailing U+FFFD from byte-level BPE, and every run of SentencePiece byte-fallback
    /// tokens such as `<0xE2>`, because the decoder validates a whole run at once and a later
    /// byte can turn earlier ones into U+FFFD).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        if self.tokenizer.is_byte_fallback(id) {
            return Ok(String::new());
        }
        self.emit(false)
    }

    /// Flush whatever is held back at the end of generation.
    pub fn finish(&mut self) -> Result<String> {
        let out = self.emit(true)?;
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(out)
    }

    /// Ids pushed but not yet turned into text (held back as possibly incomplete).
    pub fn pending_ids(&self) -> &[u32] {
        &self.ids[self.read..]
    }

    fn emit(&mut self, force: bool) -> Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let tok = self.tokenizer;
        let prefix_text = tok.decode(&self.ids[self.prefix..self.read], false)?;
        let full = tok.decode(&self.ids[self.prefix..], false)?;
        let settled = !full.ends_with('\u{FFFD}');
        if (settled || force) && full.len() > prefix_text.len() {
            if let Some(new) = full.strip_prefix(prefix_text.as_str()) {
                let new = new.to_owned();
                self.advance(self.ids.len());
                return Ok(new);
            }
            if force {
                // The window changed text it had already produced; emit what differs.
                let common = common_prefix_len(&full, &prefix_text);
                let new = full[common..].to_owned();
                self.advance(self.ids.len());
                return Ok(new);
            }
        }
        if force {
            self.advance(self.ids.len());
            return Ok(String::new());
        }
        if !settled && self.ids.len() - self.read > STALL_LIMIT {
            // Emit up to a cut with SETTLE ids after it, when the longer window agrees.
            let cut = self.ids.len() - SETTLE;
            if !tok.is_byte_fallback(self.ids[cut - 1]) && !tok.is_byte_fallback(self.ids[cut]) {
                let head = tok.decode(&self.ids[self.prefix..cut], false)?;
                if head.len() > prefix_text.len() && full.starts_with(head.as_str()) {
                    if let Some(new) = head.strip_prefix(prefix_text.as_str()) {
                        let new = new.to_owned();
                        self.advance(cut);
                        return Ok(new);
                    }
                }
            }
        }
        Ok(String::new())
    }

    /// Text up to `new_read` is emitted: the next window starts at the old read offset.
    fn advance(&mut self, new_read: usize) {
        let new_prefix = self.read;
        self.ids.drain(..new_prefix);
        self.prefix = 0;
        self.read = new_read - new_prefix;
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = 0;
    for (x, y) in a.char_indices().zip(b.chars()) {
        if x.1 != y {
            break;
        }
        n = x.0 + x.1.len_utf8();
    }
    n
}
