//! Reads `/products/export` as it streams in: splits the top-level JSON array into its objects without
//! holding the whole body, so memory stays at one network chunk plus one product whatever the inventory.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Why reading the export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The connection failed mid-body.
    #[error("the export stream broke: {0}")]
    Transport(String),
    /// The body is not a JSON array of products.
    #[error("the export is not a JSON array of products: {0}")]
    Malformed(String),
}

/// Splits a byte stream holding one JSON array into the raw bytes of each element.
#[derive(Debug, Default)]
pub struct ArraySplitter {
    buffer: BytesMut,
    /// Bytes of `buffer` already scanned.
    scanned: usize,
    /// Nesting depth at `scanned`: 0 outside the array, 1 between elements.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Where the current element starts in `buffer`.
    element_start: Option<usize>,
    finished: bool,
}

impl ArraySplitter {
    /// Appends a chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete element, if the bytes so far hold one.
    pub fn next_element(&mut self) -> Result<Option<Bytes>, ExportError> {
        while self.scanned < self.buffer.len() {
            let byte = self.buffer[self.scanned];
            let position = self.scanned;
            self.scanned += 1;
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b' ' | b'\n' | b'\r' | b'\t' => {}
                b'[' if self.depth == 0 => {
                    if self.finished {
                        return Err(ExportError::Malformed("data after the array".into()));
                    }
                    self.depth = 1;
                }
                b',' if self.depth == 1 => {}
                b']' if self.depth == 1 => {
                    self.depth = 0;
                    self.finished = true;
                }
                b'{' | b'[' => {
                    if self.depth == 1 {
                        self.element_start = Some(position);
                    }
                    self.depth += 1;
                }
                b'}' | b']' if self.depth >= 2 => {
                    self.depth -= 1;
                    if self.depth == 1 {
                        return Ok(Some(self.take_element(position + 1)));
                    }
                }
                b'"' if self.depth >= 2 => self.in_string = true,
                _ if self.depth >= 2 => {}
                other => {
                    return Err(ExportError::Malformed(format!(
                        "unexpected '{}' at depth {}",
                        other as char, self.depth
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Whether the closing `]` has been seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn take_element(&mut self, end: usize) -> Bytes {
        let start = self.element_start.take().unwrap_or(0);
        // Splitting off what is consumed keeps the buffer at one unfinished element, without copying.
        let mut consumed = self.buffer.split_to(end);
        self.scanned -= end;
        consumed.advance(start);
        consumed.freeze()
    }
}

/// Turns a streamed export body into a stream of parsed items.
pub fn products<T, S, E>(body: S) -> impl Stream<Item = Result<T, ExportError>>
where
    T: serde::de::DeserializeOwned,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    futures::stream::unfold(
        (body, ArraySplitter::default(), false),
        |(mut body, mut splitter, done)| async move {
            if done {
                return None;
            }
            loop {
                match splitter.next_element() {
                    Ok(Some(raw)) => {
                        let item = serde_json::from_slice::<T>(&raw)
                            .map_err(|err| ExportError::Malformed(err.to_string()));
                        return Some((item, (body, splitter, false)));
                    }
                    Ok(None) => {}
                    Err(err) => return Some((Err(err), (body, splitter, true))),
                }
                match body.next().await {
                    Some(Ok(chunk)) => splitter.push(&chunk),
                    Some(Err(err)) => {
                        return Some((
                            Err(ExportError::Transport(err.to_string())),
                            (body, splitter, true),
                        ));
                    }
                    None if splitter.is_finished() => return None,
                    None => {
                        let err =
                            ExportError::Malformed("the body ended before the array closed".into());
                        return Some((Err(err), (body, splitter, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_pieces(body: &str, piece: usize) -> Result<Vec<String>, ExportError> {
        let mut splitter = ArraySplitter::default();
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(piece) {
            splitter.push(chunk);
            while let Some(element) = splitter.next_element()? {
                out.push(String::from_utf8(element.to_vec()).unwrap());
            }
        }
        assert!(splitter.is_finished());
        Ok(out)
    }

    #[test]
    fn elements_come_out_whole_however_the_body_is_cut() {
        let body =
            r#" [ {"id":1,"name_en":"A, \"quoted\" ]}","p":{"x":[1,2]}}, {"id":2,"d":"{"} ] "#;
        for piece in [1, 2, 3, 7, 1000] {
            let elements = split_in_pieces(body, piece).unwrap();
            assert_eq!(elements.len(), 2, "piece size {piece}");
            assert!(elements[0].starts_with(r#"{"id":1"#) && elements[0].ends_with("}}"));
            assert_eq!(elements[1], r#"{"id":2,"d":"{"}"#);
        }
    }

    #[test]
    fn an_empty_array_has_no_elements() {
        assert!(split_in_pieces("[]", 1).unwrap().is_empty());
    }

    #[test]
    fn a_non_array_body_is_malformed() {
        let mut splitter = ArraySplitter::default();
        splitter.push(br#"{"error":"x"}"#);
        assert!(splitter.next_element().is_err());
    }

    #[test]
    fn the_buffer_holds_at_most_one_unfinished_element() {
        let mut splitter = ArraySplitter::default();
        splitter.push(b"[");
        for n in 0..10_000 {
            splitter.push(format!(r#"{{"id":{n}}},"#).as_bytes());
            while splitter.next_element().unwrap().is_some() {}
        }
        assert!(
            splitter.buffer.len() < 64,
            "{} bytes kept",
            splitter.buffer.len()
        );
    }

    #[tokio::test]
    async fn a_body_that_ends_early_is_an_error_not_a_short_inventory() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from_static(br#"[{"id":1},{"id":"#))];
        let items: Vec<Result<serde_json::Value, ExportError>> =
            products(futures::stream::iter(chunks)).collect().await;
        assert!(items[0].is_ok());
        assert!(matches!(items.last(), Some(Err(ExportError::Malformed(_)))));
    }
}
