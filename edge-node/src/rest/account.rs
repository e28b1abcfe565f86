//! The account routes `wrangler` and the SDKs call before any KV route: they find the
//! account id (`/accounts`, `/memberships`) and check who is logged in (`/user`,
//! `/user/tokens/verify`). The cluster serves one account.

use super::envelope::{ok, page};
use super::target::{Query, Target};
use super::Gateway;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use kv_common::auth::Principal;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<String>,
}

fn account(gw: &Gateway) -> serde_json::Value {
    json!({
        "id": gw.account.id,
        "name": gw.account.name,
        "type": "standard",
        "settings": { "enforce_twofactor": false },
        "created_on": "2026-01-01T00:00:00Z",
    })
}

/// The one item of a paged list: on page 1, and nothing past it.
fn one_item(q: &PageQuery, item: serde_json::Value) -> Response {
    let first = q.page.as_deref().is_none_or(|p| p.trim() == "1");
    let items = if first { vec![item] } else { Vec::new() };
    let info = json!({ "page": q.page.as_deref().unwrap_or("1").parse::<u32>().unwrap_or(1), "per_page": 20,
        "count": items.len(), "total_count": 1, "total_pages": 1 });
    page(items, info)
}

pub async fn list(State(gw): State<Gateway>, Query(q): Query<PageQuery>) -> Response {
    one_item(&q, account(&gw))
}

pub async fn get(State(gw): State<Gateway>, _ours: Target) -> Response {
    ok(account(&gw))
}

pub async fn memberships(State(gw): State<Gateway>, Query(q): Query<PageQuery>) -> Response {
    let membership = json!({
        "id": gw.account.id,
        "status": "accepted",
        "account": { "id": gw.account.id, "name": gw.account.name },
        "roles": ["Administrator"],
    });
    one_item(&q, membership)
}

pub async fn user(State(gw): State<Gateway>) -> Response {
    ok(json!({ "id": gw.account.id, "email": format!("{}@localhost", gw.account.name) }))
}

/// The token the call carries: any valid token may ask.
pub async fn verify(Extension(who): Extension<Principal>) -> Response {
    ok(json!({ "id": who.token_id, "status": "active" }))
}
