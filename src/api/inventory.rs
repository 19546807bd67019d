//! `InventoryService`: checked input in, one call into [`Inventory`], items out.

use std::time::Duration;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::{
    accounts::timestamp,
    auth,
    fields::user_id,
    layers::RpcDeadline,
    pages::{ITEM_PAGES, PageRequest},
    pb::v1 as pb,
    status,
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
        let user_id = user_id(&request.get_ref().user_id)?;
        auth::require_user(&request, user_id)?;
        let body = request.into_inner();
        let page = PageRequest::parse(body.page_size, &body.page_token, ITEM_PAGES)?;
        let filter = list_filter(body.filter.unwrap_or_default())?;
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
        let (user_id, product_id) = item_key(
            &request,
            &request.get_ref().user_id,
            request.get_ref().product_id,
        )?;
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
        let (user_id, product_id) = item_key(
            &request,
            &request.get_ref().user_id,
            request.get_ref().product_id,
        )?;
        let edit = item_edit(request.into_inner())?;
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
        let (user_id, product_id) = item_key(
            &request,
            &request.get_ref().user_id,
            request.get_ref().product_id,
        )?;
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
        let user_id = user_id(&request.get_ref().user_id)?;
        auth::require_user(&request, user_id)?;
        let answer_by = RpcDeadline::answer_by(&request, ANSWER_MARGIN);
        let new = new_item(user_id, request.into_inner())?;
        let tag = self.inventory.create(&new).await.map_err(Status::from)?;
        // The create is durable now; wait for the push job to land it, as long as the caller waits.
        loop {
            let status = self
                .inventory
                .create_status(user_id, &tag)
                .await
                .map_err(Status::from)?;
            if status.push != PushStatus::Pending || tokio::time::Instant::now() >= answer_by {
                return Ok(Response::new(encode_create(&status)));
            }
            tokio::time::sleep(CREATE_POLL.min(answer_by - tokio::time::Instant::now())).await;
        }
    }

    async fn list_offers(
        &self,
        request: Request<pb::ListOffersRequest>,
    ) -> Result<Response<pb::ListOffersResponse>, Status> {
        auth::require_service(&request)?;
        let body = request.into_inner();
        let key = match (body.print_id, body.blueprint_id) {
            (print, 0) if print > 0 => OfferKey::Print(print),
            (0, blueprint) if blueprint > 0 => OfferKey::Blueprint(blueprint),
            (0, 0) => {
                return Err(status::invalid_argument(
                    "print_id",
                    "give print_id or blueprint_id",
                ));
            }
            _ if body.print_id < 0 => {
                return Err(status::invalid_argument("print_id", "must be positive"));
            }
            _ if body.blueprint_id < 0 => {
                return Err(status::invalid_argument("blueprint_id", "must be positive"));
            }
            _ => {
                return Err(status::invalid_argument(
                    "blueprint_id",
                    "give only one of print_id and blueprint_id",
                ));
            }
        };
        if body.min_quantity < 0 {
            return Err(status::invalid_argument(
                "min_quantity",
                "must not be negative",
            ));
        }
        if body.max_price_cents < 0 {
            return Err(status::invalid_argument(
                "max_price_cents",
                "must not be negative",
            ));
        }
        let page = PageRequest::parse(body.page_size, &body.page_token, ITEM_PAGES)?;
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

/// The `(user_id, product_id)` of a request, checked, with the caller allowed to act for the seller.
fn item_key<T>(
    request: &Request<T>,
    raw_user: &str,
    product_id: i64,
) -> Result<(UserId, i64), Status> {
    let user_id = user_id(raw_user)?;
    auth::require_user(request, user_id)?;
    if product_id <= 0 {
        return Err(status::invalid_argument("product_id", "must be positive"));
    }
    Ok((user_id, product_id))
}

fn list_filter(filter: pb::InventoryFilter) -> Result<ListFilter, Status> {
    let positive = |value: i64, field: &str| match value {
        0 => Ok(None),
        id if id > 0 => Ok(Some(id)),
        _ => Err(status::invalid_argument(field, "must be positive")),
    };
    let mapped = match pb::MappingFilter::try_from(filter.mapping) {
        Ok(pb::MappingFilter::Unspecified) => None,
        Ok(pb::MappingFilter::Mapped) => Some(true),
        Ok(pb::MappingFilter::Unmapped) => Some(false),
        Err(_) => {
            return Err(status::invalid_argument(
                "filter.mapping",
                "unknown mapping filter",
            ));
        }
    };
    if filter.name_prefix.len() > 200 {
        return Err(status::invalid_argument(
            "filter.name_prefix",
            "at most 200 characters",
        ));
    }
    Ok(ListFilter {
        blueprint_id: positive(filter.blueprint_id, "filter.blueprint_id")?,
        expansion_id: positive(filter.expansion_id, "filter.expansion_id")?,
        name_prefix: (!filter.name_prefix.is_empty()).then_some(filter.name_prefix),
        mapped,
    })
}

fn item_edit(body: pb::UpdateItemRequest) -> Result<ItemEdit, Status> {
    if let Some(price) = body.price_cents
        && price < 0
    {
        return Err(status::invalid_argument(
            "price_cents",
            "must not be negative",
        ));
    }
    if let Some(quantity) = body.quantity
        && quantity < 0
    {
        return Err(status::invalid_argument("quantity", "must not be negative"));
    }
    check_text("description", body.description.as_deref())?;
    check_text("user_data_field", body.user_data_field.as_deref())?;
    let properties = body
        .properties
        .map(|properties| struct_to_json(properties, "properties"))
        .transpose()?;
    let edit = ItemEdit {
        price_cents: body.price_cents,
        quantity: body.quantity,
        description: body.description,
        properties,
        user_data_field: body.user_data_field,
    };
    if edit.is_empty() {
        const EDITABLE: [&str; 5] = [
            "price_cents",
            "quantity",
            "description",
            "properties",
            "user_data_field",
        ];
        let violations = EDITABLE.map(|field| (field, "give this or another editable field"));
        return Err(status::invalid_arguments(
            "nothing to change: give at least one of price_cents, quantity, description, \
             properties, user_data_field",
            &violations,
        ));
    }
    Ok(edit)
}

fn new_item(user_id: UserId, body: pb::CreateItemRequest) -> Result<NewItem, Status> {
    if body.blueprint_id <= 0 {
        return Err(status::invalid_argument("blueprint_id", "must be positive"));
    }
    if body.price_cents < 1 {
        return Err(status::invalid_argument(
            "price_cents",
            "must be at least 1",
        ));
    }
    if body.quantity < 1 {
        return Err(status::invalid_argument("quantity", "must be at least 1"));
    }
    check_text("description", Some(&body.description))?;
    let properties = body
        .properties
        .map(|properties| struct_to_json(properties, "properties"))
        .transpose()?
        .unwrap_or_default();
    Ok(NewItem {
        user_id,
        blueprint_id: body.blueprint_id,
        price_cents: body.price_cents,
        quantity: body.quantity,
        description: (!body.description.is_empty()).then_some(body.description),
        properties,
        graded: body.graded,
    })
}

fn check_text(field: &str, text: Option<&str>) -> Result<(), Status> {
    match text {
        Some(text) if text.chars().count() > MAX_TEXT_LEN => Err(status::invalid_argument(
            field,
            format!("at most {MAX_TEXT_LEN} characters"),
        )),
        _ => Ok(()),
    }
}

/// Properties as CardTrader takes them: names to strings, numbers or booleans.
fn struct_to_json(
    properties: prost_types::Struct,
    field: &str,
) -> Result<Map<String, Value>, Status> {
    use prost_types::value::Kind;
    properties
        .fields
        .into_iter()
        .map(|(name, value)| {
            let value = match value.kind {
                Some(Kind::StringValue(text)) => Value::String(text),
                Some(Kind::BoolValue(flag)) => Value::Bool(flag),
                Some(Kind::NumberValue(number)) => serde_json::Number::from_f64(number)
                    .map(Value::Number)
                    .ok_or_else(|| {
                        status::invalid_argument(&format!("{field}.{name}"), "not a finite number")
                    })?,
                _ => {
                    return Err(status::invalid_argument(
                        &format!("{field}.{name}"),
                        "must be a string, number or boolean",
                    ));
                }
            };
            Ok((name, value))
        })
        .collect()
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
        let back = struct_to_json(json_to_struct(&properties), "properties").unwrap();
        assert_eq!(back, properties);
    }

    #[test]
    fn an_empty_edit_is_refused() {
        let err = item_edit(pb::UpdateItemRequest::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
