//! Reads `/products/export` as it streams in: splits the top-level JSON array into its objects without
//! holding the whole body, so memory stays at one network chunk plus one product whatever the inventory,
//! and a product larger than `BRX_SYNC_MAX_PRODUCT_BYTES` ends the read instead of growing the buffer.

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
    /// A product is larger than the configured bound; reading stopped there.
    #[error(
        "a product of the export is larger than BRX_SYNC_MAX_PRODUCT_BYTES ({limit} bytes); \
         the export was not read further"
    )]
    ProductTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// The caller's cancellation token fired (the job is stopping); the body was dropped unread.
    #[error("the export was abandoned: the job is stopping")]
    Stopped,
}

/// Splits a byte stream holding one JSON array into the raw bytes of each element, holding at most
/// one unfinished element of at most `max_element` bytes (plus the chunk being scanned).
#[derive(Debug)]
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
    /// Largest element accepted, in bytes.
    max_element: usize,
}

impl ArraySplitter {
    /// A splitter refusing elements longer than `max_element` bytes.
    pub fn new(max_element: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            element_start: None,
            finished: false,
            max_element,
        }
    }

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
                        return self.take_element(position + 1).map(Some);
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
        self.keep_only_unfinished()?;
        Ok(None)
    }

    /// Drops what was scanned outside any element (brackets, commas, whitespace), so the buffer
    /// holds the unfinished element and nothing else, and refuses that element once it passes the
    /// bound: the caller then stops reading rather than buffer a product without limit.
    fn keep_only_unfinished(&mut self) -> Result<(), ExportError> {
        let start = self.element_start.unwrap_or(self.scanned);
        self.buffer.advance(start);
        self.scanned -= start;
        if self.element_start.is_some() {
            self.element_start = Some(0);
        }
        if self.buffer.len() > self.max_element && self.element_start.is_some() {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> ExportError {
        ExportError::ProductTooLarge {
            limit: self.max_element,
        }
    }

    /// Whether the closing `]` has been seen.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn take_element(&mut self, end: usize) -> Result<Bytes, ExportError> {
        let start = self.element_start.take().unwrap_or(0);
        if end - start > self.max_element {
            return Err(self.too_large());
        }
        // Splitting off what is consumed keeps the buffer at one unfinished element, without copying.
        let mut consumed = self.buffer.split_to(end);
        self.scanned -= end;
        consumed.advance(start);
        Ok(consumed.freeze())
    }
}

/// Ends `items` with [`ExportError::Stopped`] as soon as `cancel` fires, even while waiting for
/// the network: the rest of the body is dropped unread.
pub fn stopped_by<T>(
    items: impl Stream<Item = Result<T, ExportError>> + Send + 'static,
    cancel: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<T, ExportError>> + Send + 'static
where
    T: Send + 'static,
{
    futures::stream::unfold(Some(Box::pin(items)), move |items| {
        let cancel = cancel.clone();
        async move {
            let mut items = items?;
            tokio::select! {
                biased;
                () = cancel.cancelled() => Some((Err(ExportError::Stopped), None)),
                next = items.next() => next.map(|item| (item, Some(items))),
            }
        }
    })
}

/// Turns a streamed export body into a stream of parsed items; a product longer than
/// `max_product_bytes` ends the stream with [`ExportError::ProductTooLarge`] (and the body is
/// dropped unread).
pub fn products<T, S, E>(
    body: S,
    max_product_bytes: usize,
) -> impl Stream<Item = Result<T, ExportError>>
where
    T: serde::de::DeserializeOwned,
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    futures::stream::unfold(
        (body, ArraySplitter::new(max_product_bytes), false),
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

    /// A bound far above every element of these tests but the ones meant to pass it.
    const LIMIT: usize = 1024;

    #[tokio::test]
    async fn a_stopped_read_ends_with_stopped_even_while_the_body_is_silent() {
        // One product, then a body that never sends another byte (a hung export).
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(
            "[{\"id\": 1}",
        ))])
        .chain(futures::stream::pending());
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut items = Box::pin(stopped_by(
            products::<serde_json::Value, _, _>(Box::pin(body), LIMIT),
            cancel.clone(),
        ));

        let first = items.next().await.unwrap().unwrap();
        cancel.cancel();
        let then = items.next().await;
        let after = items.next().await;

        assert_eq!(first["id"], 1);
        assert!(matches!(then, Some(Err(ExportError::Stopped))), "{then:?}");
        assert!(after.is_none(), "nothing after the stop");
    }

    fn split_in_pieces(body: &str, piece: usize) -> Result<Vec<String>, ExportError> {
        let mut splitter = ArraySplitter::new(LIMIT);
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
        let mut splitter = ArraySplitter::new(LIMIT);
        splitter.push(br#"{"error":"x"}"#);
        assert!(splitter.next_element().is_err());
    }

    #[test]
    fn the_buffer_holds_at_most_one_unfinished_element() {
        let mut splitter = ArraySplitter::new(LIMIT);
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
            products(futures::stream::iter(chunks), LIMIT)
                .collect()
                .await;
        assert!(items[0].is_ok());
        assert!(matches!(items.last(), Some(Err(ExportError::Malformed(_)))));
    }

    /// An object of exactly `len` bytes: `{"d":"xxx…"}`.
    fn element_of(len: usize) -> String {
        format!(r#"{{"d":"{}"}}"#, "x".repeat(len - 8))
    }

    #[test]
    fn an_element_at_the_bound_passes_and_one_byte_more_is_refused() {
        let at_bound = format!("[{}]", element_of(LIMIT));
        let past_bound = format!("[{}]", element_of(LIMIT + 1));

        for piece in [1, 100, 10_000] {
            assert_eq!(split_in_pieces(&at_bound, piece).unwrap().len(), 1);
            assert!(matches!(
                split_in_pieces(&past_bound, piece),
                Err(ExportError::ProductTooLarge { limit: LIMIT })
            ));
        }
    }

    #[test]
    fn an_endless_element_is_refused_once_past_the_bound_without_buffering_more() {
        let mut splitter = ArraySplitter::new(LIMIT);
        splitter.push(br#"[{"id":1},  {"d":""#);
        let chunk = [b'x'; 100];
        let mut pushed = 0;
        let refused = loop {
            splitter.push(&chunk);
            pushed += chunk.len();
            match splitter.next_element() {
                Ok(Some(_)) => continue,
                Ok(None) => assert!(pushed < 10 * LIMIT, "never refused"),
                Err(err) => break err,
            }
        };

        assert!(matches!(
            refused,
            ExportError::ProductTooLarge { limit: LIMIT }
        ));
        assert!(
            splitter.buffer.len() <= LIMIT + chunk.len(),
            "{} bytes kept",
            splitter.buffer.len()
        );
    }

    #[tokio::test]
    async fn a_product_past_the_bound_ends_the_stream_and_the_body_is_not_read_further() {
        let huge = Bytes::from(format!(r#"[{{"id":1}},{}"#, element_of(LIMIT * 2)));
        let body = futures::stream::iter([Ok::<_, std::io::Error>(huge)]).chain(
            futures::stream::once(async { panic!("the body was read past the refused product") }),
        );
        let items: Vec<Result<serde_json::Value, ExportError>> =
            products(Box::pin(body), LIMIT).collect().await;

        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(matches!(
            items[1],
            Err(ExportError::ProductTooLarge { limit: LIMIT })
        ));
    }
}
