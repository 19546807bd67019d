//! `InventoryService`: checked input in, one call into [`Inventory`], items out.

use std::time::Duration;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::{
    accounts::timestamp,
    auth,
    fields::FieldCheck,
    layers::RpcDeadline,
    pages::{ITEM_PAGES, PageRequest},
    pb::v1 as pb,
};
use crate::{
    domain::UserId,
    inventory::{
        CreateStatus, Inventory, Item, ItemEdit, ListFilter, NewItem, Offer, OfferKey, OfferQuery,
        PushStatus,
    },
};

/// Longest description or user_data_field accepted.
const MAX_TEXT_LEN: usize = 2_000;
/// How often CreateItem looks whether its create has landed.
const CREATE_POLL: Duration = Duration::from_millis(100);
/// CreateItem answers this long before the RPC's deadline, with the create still pending if it is.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// Handler state of `InventoryService`.
#[derive(Debug, Clone)]
pub(crate) struct InventoryApi {
    pub(crate) inventory: Inventory,
}

#[tonic::async_trait]
impl pb::inventory_service_server::InventoryService for InventoryApi {
    async fn list_inventory(
        &self,
        request: Request<pb::ListInventoryRequest>,
    ) -> Result<Response<pb::ListInventoryResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let body = request.into_inner();
        let page = PageRequest::parse(&mut check, body.page_size, &body.page_token, ITEM_PAGES);
        let filter = list_filter(&mut check, body.filter.unwrap_or_default());
        let user_id = check.finish_with(seller)?;
        let items = self
            .inventory
            .list(user_id, &filter, page.after, page.size)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::ListInventoryResponse {
            next_page_token: page.next_token(&items, |last| Some(last.product_id)),
            items: items.iter().map(encode_item).collect(),
        }))
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        let mut check = FieldCheck::default();
        let product_id = request.get_ref().product_id;
        let seller = item_key(&mut check, &request, &request.get_ref().user_id, product_id)?;
        let user_id = check.finish_with(seller)?;
        let item = self
            .inventory
            .get(user_id, product_id)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::GetItemResponse {
            item: Some(encode_item(&item)),
        }))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        let mut check = FieldCheck::default();
        let product_id = request.get_ref().product_id;
        let seller = item_key(&mut check, &request, &request.get_ref().user_id, product_id)?;
        let edit = item_edit(&mut check, request.into_inner());
        let user_id = check.finish_with(seller)?;
        let item = self
            .inventory
            .update(user_id, product_id, &edit)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::UpdateItemResponse {
            item: Some(encode_item(&item)),
        }))
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        let mut check = FieldCheck::default();
        let product_id = request.get_ref().product_id;
        let seller = item_key(&mut check, &request, &request.get_ref().user_id, product_id)?;
        let user_id = check.finish_with(seller)?;
        self.inventory
            .delete(user_id, product_id)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(pb::DeleteItemResponse {
            push_state: pb::PushState::Pending.into(),
        }))
    }

    async fn create_item(
        &self,
        request: Request<pb::CreateItemRequest>,
    ) -> Result<Response<pb::CreateItemResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let answer_by = RpcDeadline::answer_by(&request, ANSWER_MARGIN);
        let new = new_item(&mut check, seller, request.into_inner());
        let new = check.finish_with(new)?;
        let user_id = new.user_id;
        let tag = self.inventory.create(&new).await.map_err(Status::from)?;
        // The create is durable now; wait for the push job to land it, as long as the caller waits.
        loop {
            let status = self
                .inventory
                .create_status(user_id, &tag)
                .await
                .map_err(Status::from)?;
            if status.push != PushStatus::Pending || answer_by.is_due() {
                return Ok(Response::new(encode_create(&status)));
            }
            tokio::select! {
                () = tokio::time::sleep(CREATE_POLL) => {}
                () = answer_by.due() => {}
            }
        }
    }

    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        auth::require_service(&request)?;
        let body = request.into_inner();
        let mut check = FieldCheck::default();
        let key = offer_key(&mut check, body.print_id, body.blueprint_id);
        check.require(
            body.min_quantity >= 0,
            "min_quantity",
            "must not be negative",
        );
        check.require(
            body.max_price_cents >= 0,
            "max_price_cents",
            "must not be negative",
        );
        let page = PageRequest::parse(&mut check, body.page_size, &body.page_token, ITEM_PAGES);
        let key = check.finish_with(key)?;
        let query = OfferQuery {
            key,
            min_available: body.min_quantity.max(1),
            max_price_cents: (body.max_price_cents > 0).then_some(body.max_price_cents),
            after: page.after,
            limit: page.size,
        };
        let offers = self.inventory.offers(&query).await.map_err(Status::from)?;
        Ok(Response::new(pb::ListOffersResponse {
            next_page_token: page.next_token(&offers, |last| {
                Some((last.price_cents, last.user_id.as_uuid(), last.product_id))
            }),
            offers: offers.iter().map(encode_offer).collect(),
        }))
    }
}

/// The seller of an item request, checked with its `product_id`; once the seller parses, the caller
/// must be allowed to act for it.
fn item_key<T>(
    check: &mut FieldCheck,
    request: &Request<T>,
    raw_user: &str,
    product_id: i64,
) -> Result<Option<UserId>, Status> {
    let seller = check.seller(request, raw_user)?;
    check.require(product_id > 0, "product_id", "must be positive");
    Ok(seller)
}

/// ListOffers looks up one print or one blueprint: exactly one of the two ids, positive.
fn offer_key(check: &mut FieldCheck, print_id: i64, blueprint_id: i64) -> Option<OfferKey> {
    let print_ok = check.require(print_id >= 0, "print_id", "must be positive");
    let blueprint_ok = check.require(blueprint_id >= 0, "blueprint_id", "must be positive");
    match (print_id, blueprint_id) {
        (print, 0) if print > 0 => Some(OfferKey::Print(print)),
        (0, blueprint) if blueprint > 0 => Some(OfferKey::Blueprint(blueprint)),
        (0, 0) => {
            check.reject("print_id", "give print_id or blueprint_id");
            None
        }
        _ if print_ok && blueprint_ok => {
            check.reject("blueprint_id", "give only one of print_id and blueprint_id");
            None
        }
        _ => None,
    }
}

fn list_filter(check: &mut FieldCheck, filter: pb::InventoryFilter) -> ListFilter {
    let mut positive = |value: i64, field: &str| match value {
        0 => None,
        id if id > 0 => Some(id),
        _ => {
            check.reject(field, "must be positive");
            None
        }
    };
    let blueprint_id = positive(filter.blueprint_id, "filter.blueprint_id");
    let expansion_id = positive(filter.expansion_id, "filter.expansion_id");
    let mapped = match pb::MappingFilter::try_from(filter.mapping) {
        Ok(pb::MappingFilter::Unspecified) => None,
        Ok(pb::MappingFilter::Mapped) => Some(true),
        Ok(pb::MappingFilter::Unmapped) => Some(false),
        Err(_) => {
            check.reject("filter.mapping", "unknown mapping filter");
            None
        }
    };
    check.require(
        filter.name_prefix.len() <= 200,
        "filter.name_prefix",
        "at most 200 characters",
    );
    ListFilter {
        blueprint_id,
        expansion_id,
        name_prefix: (!filter.name_prefix.is_empty()).then_some(filter.name_prefix),
        mapped,
    }
}

fn item_edit(check: &mut FieldCheck, body: pb::UpdateItemRequest) -> ItemEdit {
    // Judged on what was sent, so a field sent but refused below does not also read as "nothing".
    let nothing_given = body.price_cents.is_none()
        && body.quantity.is_none()
        && body.description.is_none()
        && body.properties.is_none()
        && body.user_data_field.is_none();
    if nothing_given {
        check.reject_together(
            &EDITABLE_FIELDS,
            "nothing to change: give at least one of these",
        );
    }
    if let Some(price) = body.price_cents {
        check.require(price >= 0, "price_cents", "must not be negative");
    }
    if let Some(quantity) = body.quantity {
        check.require(quantity >= 0, "quantity", "must not be negative");
    }
    check_text(check, "description", body.description.as_deref());
    check_text(check, "user_data_field", body.user_data_field.as_deref());
    ItemEdit {
        price_cents: body.price_cents,
        quantity: body.quantity,
        description: body.description,
        properties: body
            .properties
            .map(|properties| struct_to_json(check, properties, "properties")),
        user_data_field: body.user_data_field,
    }
}

/// The fields UpdateItem can change.
const EDITABLE_FIELDS: [&str; 5] = [
    "price_cents",
    "quantity",
    "description",
    "properties",
    "user_data_field",
];

/// The item to create, once `seller` parsed; every bad field is recorded in `check`.
fn new_item(
    check: &mut FieldCheck,
    seller: Option<UserId>,
    body: pb::CreateItemRequest,
) -> Option<NewItem> {
    check.require(body.blueprint_id > 0, "blueprint_id", "must be positive");
    check.require(body.price_cents >= 1, "price_cents", "must be at least 1");
    check.require(body.quantity >= 1, "quantity", "must be at least 1");
    check_text(check, "description", Some(&body.description));
    let properties = body
        .properties
        .map(|properties| struct_to_json(check, properties, "properties"))
        .unwrap_or_default();
    Some(NewItem {
        user_id: seller?,
        blueprint_id: body.blueprint_id,
        price_cents: body.price_cents,
        quantity: body.quantity,
        description: (!body.description.is_empty()).then_some(body.description),
        properties,
        graded: body.graded,
    })
}

fn check_text(check: &mut FieldCheck, field: &str, text: Option<&str>) {
    if let Some(text) = text {
        check.require(
            text.chars().count() <= MAX_TEXT_LEN,
            field,
            format!("at most {MAX_TEXT_LEN} characters"),
        );
    }
}

/// Properties as CardTrader takes them: names to strings, numbers or booleans. Each property of
/// another kind is recorded in `check` as `<field>.<name>`.
fn struct_to_json(
    check: &mut FieldCheck,
    properties: prost_types::Struct,
    field: &str,
) -> Map<String, Value> {
    use prost_types::value::Kind;
    let mut json = Map::new();
    for (name, value) in properties.fields {
        let value = match value.kind {
            Some(Kind::StringValue(text)) => Some(Value::String(text)),
            Some(Kind::BoolValue(flag)) => Some(Value::Bool(flag)),
            Some(Kind::NumberValue(number)) => {
                let finite = serde_json::Number::from_f64(number).map(Value::Number);
                if finite.is_none() {
                    check.reject(format!("{field}.{name}"), "not a finite number");
                }
                finite
            }
            _ => {
                check.reject(
                    format!("{field}.{name}"),
                    "must be a string, number or boolean",
                );
                None
            }
        };
        if let Some(value) = value {
            json.insert(name, value);
        }
    }
    json
}

fn json_to_struct(properties: &Map<String, Value>) -> prost_types::Struct {
    use prost_types::value::Kind;
    let fields = properties
        .iter()
        .map(|(name, value)| {
            let kind = match value {
                Value::Bool(flag) => Kind::BoolValue(*flag),
                Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
                Value::String(text) => Kind::StringValue(text.clone()),
                Value::Null => Kind::NullValue(0),
                other => Kind::StringValue(other.to_string()),
            };
            (name.clone(), prost_types::Value { kind: Some(kind) })
        })
        .collect();
    prost_types::Struct { fields }
}

fn push_state(push: &PushStatus) -> (pb::PushState, String) {
    match push {
        PushStatus::Synced => (pb::PushState::Synced, String::new()),
        PushStatus::Pending => (pb::PushState::Pending, String::new()),
        PushStatus::Failed(reason) => (pb::PushState::Failed, reason.clone()),
    }
}

fn encode_item(item: &Item) -> pb::Item {
    let (state, error) = push_state(&item.push);
    pb::Item {
        user_id: item.user_id.to_string(),
        product_id: item.product_id,
        blueprint_id: item.blueprint_id,
        expansion_id: item.expansion_id.unwrap_or_default(),
        print_id: item.print_id.unwrap_or_default(),
        name: item.name.clone(),
        quantity: item.quantity,
        reserved_quantity: item.reserved_quantity,
        price_cents: item.price_cents,
        currency: item.currency.clone(),
        properties: Some(json_to_struct(&item.properties)),
        description: item.description.clone().unwrap_or_default(),
        user_data_field: item.user_data_field.clone().unwrap_or_default(),
        graded: item.graded.unwrap_or_default(),
        push_state: state.into(),
        push_error: error,
        updated_at: Some(timestamp(item.updated_at)),
    }
}

fn encode_create(status: &CreateStatus) -> pb::CreateItemResponse {
    let (state, error) = push_state(&status.push);
    pb::CreateItemResponse {
        create_tag: status.create_tag.clone(),
        push_state: state.into(),
        push_error: error,
        item: status.item.as_ref().map(encode_item),
    }
}

fn encode_offer(offer: &Offer) -> pb::Offer {
    pb::Offer {
        user_id: offer.user_id.to_string(),
        product_id: offer.product_id,
        blueprint_id: offer.blueprint_id,
        print_id: offer.print_id.unwrap_or_default(),
        name: offer.name.clone(),
        available_quantity: offer.available,
        price_cents: offer.price_cents,
        currency: offer.currency.clone(),
        properties: Some(json_to_struct(&offer.properties)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_survive_the_struct_round_trip() {
        let mut properties = Map::new();
        properties.insert("condition".into(), Value::String("Near Mint".into()));
        properties.insert("mtg_foil".into(), Value::Bool(true));
        let mut check = FieldCheck::default();
        let back = struct_to_json(&mut check, json_to_struct(&properties), "properties");
        assert_eq!(back, properties);
        check.finish().unwrap();
    }

    #[test]
    fn an_empty_edit_is_refused() {
        let mut check = FieldCheck::default();
        let _ = item_edit(&mut check, pb::UpdateItemRequest::default());
        let err = check.finish().unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
