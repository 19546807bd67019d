//! `PurchaseService`: checked input in, one call into [`Purchases`], purchases out.

use std::{collections::HashSet, time::Duration};

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    accounts::timestamp,
    auth,
    fields::{self, FieldCheck},
    layers::RpcDeadline,
    pages::{PageRequest, RECORD_PAGES},
    pb::v1 as pb,
    status,
    streams::{BoxedStream, Source, Streams},
};
use crate::{
    domain::UserId,
    jobs::wake::Subject,
    purchase::{
        NewPurchase, PurchaseLine, Purchases, StoredPurchase,
        saga::{LineStatus, Phase, PurchaseState},
    },
};

/// Lines one purchase may have.
const MAX_PURCHASE_LINES: usize = 100;
/// Longest idempotency key or buyer reference.
const MAX_REFERENCE_LEN: usize = 200;
/// Longest operator note.
const MAX_NOTE_LEN: usize = 2_000;
/// Purchase answers this long before the RPC's deadline with the saga's current state, so the
/// caller gets a state rather than DEADLINE_EXCEEDED.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);
/// The `method` label of WatchPurchase's stream metrics.
const WATCH_PURCHASE: &str = "/brx.sync.v1.PurchaseService/WatchPurchase";

/// Handler state of `PurchaseService`.
#[derive(Debug, Clone)]
pub(crate) struct PurchaseApi {
    pub(crate) purchases: Purchases,
    /// Bounds and wake-ups of WatchPurchase streams.
    pub(crate) streams: Streams,
}

type WatchStream = BoxedStream<pb::WatchPurchaseResponse>;

#[tonic::async_trait]
impl pb::purchase_service_server::PurchaseService for PurchaseApi {
    async fn create_purchase(
        &self,
        request: Request<pb::CreatePurchaseRequest>,
    ) -> Result<Response<pb::CreatePurchaseResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let answer_by = RpcDeadline::answer_by(&request, ANSWER_MARGIN);
        let new = new_purchase(
            &mut check,
            seller,
            request.into_inner(),
            self.purchases.deadline_from_now(),
        );
        let new = check.finish_with(new)?;
        let outcome = self.purchases.purchase(&new, &answer_by).await?;
        let mut answer = encode(&outcome.purchase);
        answer.replayed = outcome.replayed;
        if let Phase::Failed { reason } = &outcome.purchase.saga.phase {
            return Err(status::purchase_undone(outcome.purchase.id, reason));
        }
        Ok(Response::new(pb::CreatePurchaseResponse {
            purchase: Some(answer),
        }))
    }

    async fn get_purchase(
        &self,
        request: Request<pb::GetPurchaseRequest>,
    ) -> Result<Response<pb::GetPurchaseResponse>, Status> {
        let purchase = self.owned(&request, &request.get_ref().purchase_id).await?;
        Ok(Response::new(pb::GetPurchaseResponse {
            purchase: Some(encode(&purchase)),
        }))
    }

    async fn list_purchases(
        &self,
        request: Request<pb::ListPurchasesRequest>,
    ) -> Result<Response<pb::ListPurchasesResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let body = request.into_inner();
        let page = PageRequest::parse(&mut check, body.page_size, &body.page_token, RECORD_PAGES);
        let state = match pb::PurchaseState::try_from(body.state) {
            Ok(pb::PurchaseState::Unspecified) => None,
            Ok(state) => Some(state_column(state)),
            Err(_) => {
                check.reject("state", "unknown state");
                None
            }
        };
        let user_id = check.finish_with(seller)?;
        let purchases = self
            .purchases
            .list(user_id, state, page.after, page.size)
            .await?;
        Ok(Response::new(pb::ListPurchasesResponse {
            next_page_token: page.next_token(&purchases, |last| Some((last.created_at, last.id))),
            purchases: purchases.iter().map(encode).collect(),
        }))
    }

    type WatchPurchaseStream = WatchStream;

    async fn watch_purchase(
        &self,
        request: Request<pb::WatchPurchaseRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = purchase_id(&request.get_ref().purchase_id)?;
        let admitted = self.streams.admit(&request, WATCH_PURCHASE)?;
        let subscription = admitted.subscribe(Subject::Purchase(id));
        let first = self.owned(&request, &request.get_ref().purchase_id).await?;
        let purchases = self.purchases.clone();
        let source = Source {
            read: Box::new(move || {
                let purchases = purchases.clone();
                Box::pin(async move { purchases.get(id).await.map_err(Status::from) })
            }),
            encode: |purchase: &StoredPurchase| pb::WatchPurchaseResponse {
                purchase: Some(encode(purchase)),
            },
            is_terminal: |purchase: &StoredPurchase| purchase.saga.phase.is_terminal(),
        };
        Ok(Response::new(admitted.follow(subscription, first, source)))
    }

    async fn retry_purchase(
        &self,
        request: Request<pb::RetryPurchaseRequest>,
    ) -> Result<Response<pb::RetryPurchaseResponse>, Status> {
        auth::require_service(&request)?;
        let id = purchase_id(&request.get_ref().purchase_id)?;
        Ok(Response::new(pb::RetryPurchaseResponse {
            purchase: Some(encode(&self.purchases.retry(id).await?)),
        }))
    }

    async fn resolve_purchase(
        &self,
        request: Request<pb::ResolvePurchaseRequest>,
    ) -> Result<Response<pb::ResolvePurchaseResponse>, Status> {
        auth::require_service(&request)?;
        let body = request.into_inner();
        let mut check = FieldCheck::default();
        let id = check.take("purchase_id", fields::uuid(&body.purchase_id));
        let sold = match pb::Resolution::try_from(body.resolution) {
            Ok(pb::Resolution::Sold) => Some(true),
            Ok(pb::Resolution::Undone) => Some(false),
            _ => {
                check.reject("resolution", "must be RESOLUTION_SOLD or RESOLUTION_UNDONE");
                None
            }
        };
        let note = body.note.trim();
        check.require(
            !note.is_empty() && note.chars().count() <= MAX_NOTE_LEN,
            "note",
            format!("required, at most {MAX_NOTE_LEN} characters"),
        );
        let (id, sold) = check.finish_with(id.zip(sold))?;
        Ok(Response::new(pb::ResolvePurchaseResponse {
            purchase: Some(encode(&self.purchases.resolve(id, sold, note).await?)),
        }))
    }
}

impl PurchaseApi {
    /// The purchase `raw_id` of the request, if the caller may see it.
    async fn owned<T>(&self, request: &Request<T>, raw_id: &str) -> Result<StoredPurchase, Status> {
        let id = purchase_id(raw_id)?;
        let purchase = self.purchases.get(id).await?;
        auth::require_user(request, purchase.user_id)?;
        Ok(purchase)
    }
}

fn purchase_id(raw: &str) -> Result<Uuid, Status> {
    fields::uuid(raw).map_err(|reason| status::invalid_argument("purchase_id", reason))
}

/// The purchase asked for, once `seller` parsed; every bad field is recorded in `check`.
fn new_purchase(
    check: &mut FieldCheck,
    seller: Option<UserId>,
    body: pb::CreatePurchaseRequest,
    deadline: chrono::DateTime<chrono::Utc>,
) -> Option<NewPurchase> {
    let key = body.idempotency_key.trim();
    check.require(
        !key.is_empty() && key.chars().count() <= MAX_REFERENCE_LEN,
        "idempotency_key",
        format!("required, at most {MAX_REFERENCE_LEN} characters"),
    );
    check.require(
        body.buyer_ref.chars().count() <= MAX_REFERENCE_LEN,
        "buyer_ref",
        format!("at most {MAX_REFERENCE_LEN} characters"),
    );
    let line_count_ok = check.require(
        !body.lines.is_empty() && body.lines.len() <= MAX_PURCHASE_LINES,
        "lines",
        format!("1 to {MAX_PURCHASE_LINES} lines"),
    );
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(body.lines.len());
    // Past the limit the lines are not judged one by one: the count alone is the problem.
    let judged = if line_count_ok { &body.lines[..] } else { &[] };
    for (index, line) in judged.iter().enumerate() {
        let item_id = format!("lines[{index}].item_id");
        if check.require(line.item_id > 0, &item_id, "must be positive") {
            // One line per item: CardTrader's stock of an item is taken in one call.
            check.require(
                seen.insert(line.item_id),
                &item_id,
                "each item may appear in one line only",
            );
        }
        check.require(
            line.quantity >= 1,
            &format!("lines[{index}].quantity"),
            "must be at least 1",
        );
        lines.push(PurchaseLine {
            product_id: line.item_id,
            quantity: line.quantity,
        });
    }
    Some(NewPurchase {
        user_id: seller?,
        idempotency_key: key.to_owned(),
        lines,
        buyer_ref: body.buyer_ref,
        deadline,
    })
}

fn state_column(state: pb::PurchaseState) -> PurchaseState {
    match state {
        pb::PurchaseState::Taking | pb::PurchaseState::Unspecified => PurchaseState::Taking,
        pb::PurchaseState::Finalizing => PurchaseState::Finalizing,
        pb::PurchaseState::Completed => PurchaseState::Completed,
        pb::PurchaseState::Compensating => PurchaseState::Compensating,
        pb::PurchaseState::Failed => PurchaseState::Failed,
        pb::PurchaseState::RequiresAttention => PurchaseState::RequiresAttention,
    }
}

fn encode_state(phase: &Phase) -> pb::PurchaseState {
    match phase.state() {
        PurchaseState::Taking => pb::PurchaseState::Taking,
        PurchaseState::Finalizing => pb::PurchaseState::Finalizing,
        PurchaseState::Completed => pb::PurchaseState::Completed,
        PurchaseState::Compensating => pb::PurchaseState::Compensating,
        PurchaseState::Failed => pb::PurchaseState::Failed,
        PurchaseState::RequiresAttention => pb::PurchaseState::RequiresAttention,
    }
}

fn encode_line(status: LineStatus) -> pb::LineState {
    match status {
        LineStatus::Pending => pb::LineState::Pending,
        LineStatus::DecrementSent => pb::LineState::DecrementSent,
        LineStatus::Taken => pb::LineState::Taken,
        LineStatus::Refused => pb::LineState::Refused,
        LineStatus::GiveBackSent => pb::LineState::GiveBackSent,
        LineStatus::GivenBack => pb::LineState::GivenBack,
    }
}

/// The `purchases.resolution` column ("sold" or "undone", as `Purchases::resolve` records it).
fn encode_resolution(column: &str) -> pb::Resolution {
    match column {
        "sold" => pb::Resolution::Sold,
        "undone" => pb::Resolution::Undone,
        _ => pb::Resolution::Unspecified,
    }
}

pub(crate) fn encode(purchase: &StoredPurchase) -> pb::Purchase {
    let failure_reason = match &purchase.saga.phase {
        Phase::Failed { reason }
        | Phase::RequiresAttention { reason, .. }
        | Phase::Compensating { reason } => reason.clone(),
        _ => String::new(),
    };
    let (resolution, resolution_note) = match &purchase.resolution {
        Some((resolution, note)) => (encode_resolution(resolution), note.clone()),
        None => (pb::Resolution::Unspecified, String::new()),
    };
    pb::Purchase {
        purchase_id: purchase.id.to_string(),
        user_id: purchase.user_id.to_string(),
        idempotency_key: purchase.idempotency_key.clone(),
        buyer_ref: purchase.buyer_ref.clone(),
        state: encode_state(&purchase.saga.phase).into(),
        lines: purchase
            .lines
            .iter()
            .map(|line| pb::PurchaseLineStatus {
                item_id: line.product_id,
                quantity: line.quantity,
                state: encode_line(
                    purchase
                        .saga
                        .lines
                        .get(line.line)
                        .copied()
                        .unwrap_or(LineStatus::Pending),
                )
                .into(),
                recreated_item_id: line.recreated_product_id.unwrap_or(0),
            })
            .collect(),
        failure_reason,
        resolution: resolution.into(),
        resolution_note,
        steps: u32::try_from(purchase.steps).unwrap_or(0),
        replayed: false,
        created_at: Some(timestamp(purchase.created_at)),
        updated_at: Some(timestamp(purchase.updated_at)),
        finished_at: purchase.finished_at.map(timestamp),
        deadline: Some(timestamp(purchase.deadline)),
    }
}
