//! `AccountService`: proto ↔ domain at the edge, one call into [`Accounts`] per RPC.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tonic::{Request, Response, Status};

use super::{
    auth,
    fields::{FieldCheck, user_id},
    pb::v1 as pb,
};
use crate::accounts::{Account, AccountStatus, Accounts};

/// Handler state of `AccountService`.
#[derive(Debug, Clone)]
pub(crate) struct AccountApi {
    pub(crate) accounts: Accounts,
}

/// Longest token accepted: CardTrader's JWTs are ~1 KB; anything far larger is not a token.
const MAX_TOKEN_LEN: usize = 8 * 1024;

#[tonic::async_trait]
impl pb::account_service_server::AccountService for AccountApi {
    async fn connect_account(
        &self,
        request: Request<pb::ConnectAccountRequest>,
    ) -> Result<Response<pb::ConnectAccountResponse>, Status> {
        let mut check = FieldCheck::default();
        let seller = check.seller(&request, &request.get_ref().user_id)?;
        let token = request.into_inner().cardtrader_token;
        let token = token.trim();
        check.require(
            !token.is_empty()
                && token.len() <= MAX_TOKEN_LEN
                && !token.chars().any(char::is_whitespace),
            "cardtrader_token",
            "must be a non-empty token without spaces",
        );
        let user_id = check.finish_with(seller)?;
        let account = self
            .accounts
            .connect(user_id, SecretString::from(token.to_owned()))
            .await?;
        Ok(Response::new(pb::ConnectAccountResponse {
            account: Some(encode(account)),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let user_id = user_id(&request.get_ref().user_id)?;
        auth::require_user(&request, user_id)?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(encode(self.accounts.get(user_id).await?)),
        }))
    }

    async fn disconnect_account(
        &self,
        request: Request<pb::DisconnectAccountRequest>,
    ) -> Result<Response<pb::DisconnectAccountResponse>, Status> {
        let user_id = user_id(&request.get_ref().user_id)?;
        auth::require_user(&request, user_id)?;
        let purge = request.get_ref().purge_inventory;
        Ok(Response::new(pb::DisconnectAccountResponse {
            account: Some(encode(self.accounts.disconnect(user_id, purge).await?)),
        }))
    }
}

fn encode(account: Account) -> pb::Account {
    let status = match account.status {
        AccountStatus::Connected => pb::AccountStatus::Connected,
        AccountStatus::TokenInvalid => pb::AccountStatus::TokenInvalid,
        AccountStatus::Disconnected => pb::AccountStatus::Disconnected,
    };
    pb::Account {
        user_id: account.user_id.to_string(),
        status: status.into(),
        cardtrader_user_id: account.cardtrader_user_id.unwrap_or_default(),
        connected_at: Some(timestamp(account.connected_at)),
        last_sync_at: account.last_sync_at.map(timestamp),
        updated_at: Some(timestamp(account.updated_at)),
    }
}

pub(crate) fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
