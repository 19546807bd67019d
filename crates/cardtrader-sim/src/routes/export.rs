//! `GET /products/export`: the caller's whole inventory as one JSON array, streamed in chunks of a few
//! hundred products so a million-product seller is served in bounded memory.

use std::{collections::HashMap, io, sync::Arc, time::Duration};

use axum::{
    Extension,
    body::Body,
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use bytes::Bytes;

use super::Caller;
use crate::{
    inventory::{Cursor, Filter, Product},
    state::{Seller, SimState, lock},
};

/// `GET /products/export[?blueprint_id=|?expansion_id=]`.
pub(crate) async fn export(
    State(state): State<Arc<SimState>>,
    Extension(Caller(seller)): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let int = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let filter = Filter {
        blueprint_id: int("blueprint_id"),
        expansion_id: int("expansion_id"),
    };
    let delay = state.faults().export_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let start = Export {
        seller,
        filter,
        with_expansion: state.exports_expansion(),
        cursor: Cursor::default(),
        started: false,
        emitted: false,
        finished: false,
    };
    let stream = futures::stream::unfold(start, next_bytes);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

struct Export {
    seller: Arc<Seller>,
    filter: Filter,
    with_expansion: bool,
    cursor: Cursor,
    started: bool,
    emitted: bool,
    finished: bool,
}

async fn next_bytes(mut st: Export) -> Option<(io::Result<Bytes>, Export)> {
    if st.finished {
        return None;
    }
    let products = next_products(&st.seller, &mut st.cursor, &st.filter).await;
    let mut buf = Vec::with_capacity(products.len() * 512 + 2);
    if !st.started {
        buf.push(b'[');
        st.started = true;
    }
    let user_id = st.seller.info.user_id;
    for p in &products {
        if st.emitted {
            buf.push(b',');
        }
        st.emitted = true;
        p.write_export_json(user_id, st.with_expansion, &mut buf);
    }
    if st.cursor.done {
        buf.push(b']');
        st.finished = true;
    }
    Some((Ok(Bytes::from(buf)), st))
}

/// The next non-empty chunk (or the last one); the inventory lock is held per chunk only.
async fn next_products(seller: &Seller, cursor: &mut Cursor, filter: &Filter) -> Vec<Product> {
    loop {
        let chunk = lock(&seller.inventory).next_chunk(cursor, filter);
        if !chunk.is_empty() || cursor.done {
            return chunk;
        }
        tokio::task::yield_now().await;
    }
}

/// Calls `f` on every product passing `filter`, chunk by chunk, yielding between chunks.
pub(crate) async fn for_each(seller: &Arc<Seller>, filter: &Filter, mut f: impl FnMut(&Product)) {
    let mut cursor = Cursor::default();
    while !cursor.done {
        next_products(seller, &mut cursor, filter)
            .await
            .iter()
            .for_each(&mut f);
        tokio::task::yield_now().await;
    }
}
