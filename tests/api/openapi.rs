//! The OpenAPI document at /api/v1/openapi.json against the route tables
//! the server is built from, and against real responses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use payg::domain::ManualClock;
use payg::routes::tools::TOOL_ROUTES;
use payg::routes::{API_PREFIX, API_ROUTES, ROOT_ROUTES, TOOLS_PREFIX};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp, api_id, at};

/// Routes whose answers are not the error envelope's business.
const PROBES: &[(&str, &str)] = &[("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/v1/openapi.json")];

/// Reads only the database and takes no input, so no client error is possible.
const NO_CLIENT_ERRORS: &[(&str, &str)] = &[("GET", "/api/v1/apis")];

/// Routes that take no credentials.
const PUBLIC: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("GET", "/api/v1/apis"),
    ("POST", "/api/v1/webhooks/payments"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options", "trace"];

/// Every (METHOD, full path) the server registers, from its route tables.
fn routes() -> Vec<(String, String)> {
    let tables: [(&str, &[(&str, &str)]); 3] =
        [("", ROOT_ROUTES), (API_PREFIX, API_ROUTES), (TOOLS_PREFIX, TOOL_ROUTES)];
    tables
        .iter()
        .flat_map(|(prefix, table)| {
            table
                .iter()
                .map(move |(method, path)| ((*method).to_owned(), format!("{prefix}{path}")))
        })
        .collect()
}

/// Every (METHOD, path) the spec describes, with its operation.
fn operations(spec: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    ops
}

fn listed(list: &[(&str, &str)], method: &str, path: &str) -> bool {
    list.iter().any(|(m, p)| *m == method && *p == path)
}

async fn fetch_spec(app: &TestApp) -> Value {
    let res = app.client.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    res.json().await.unwrap()
}

/// Follows a `#/components/schemas/…` reference.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local schema ref");
            let target = &spec["components"]["schemas"][name];
            assert!(target.is_object(), "dangling $ref {r}");
            resolve(spec, target)
        }
        None => schema,
    }
}

/// The JSON body schema of one response, if it has one.
fn response_schema<'a>(spec: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response = &spec["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
    assert!(response.is_object(), "{method} {path} does not document {status}");
    &response["content"]["application/json"]["schema"]
}

fn uses_error_body(response: &Value) -> bool {
    response["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_is_openapi_3_1_served_without_credentials() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        spec["openapi"]
    );
    assert_eq!(spec["info"]["title"], "payg");
    assert!(spec["paths"].as_object().is_some_and(|p| !p.is_empty()));
    assert_eq!(fetch_spec(&app).await, spec, "the same document every time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_route_tables_is_in_the_spec() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    let missing: Vec<String> = routes()
        .into_iter()
        .filter(|(method, path)| !spec["paths"][path][method.to_lowercase()].is_object())
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert!(missing.is_empty(), "routes the spec does not describe: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_in_the_spec_is_a_route_the_server_has() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    let routes: BTreeSet<(String, String)> = routes().into_iter().collect();
    let extra: Vec<String> = operations(&spec)
        .into_iter()
        .filter(|(method, path, _)| !routes.contains(&(method.clone(), path.clone())))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert!(
        extra.is_empty(),
        "the spec describes routes that do not exist: {extra:?}"
    );

    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&spec) {
        let id = op["operationId"].as_str().unwrap_or_default();
        assert!(
            !id.is_empty() && ids.insert(id.to_owned()),
            "{method} {path}: operationId {id:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_in_the_route_tables_is_served() {
    let app = TestApp::spawn().await;
    for (method, path) in routes() {
        let concrete = path
            .replace("{id}", "1")
            .replace("{period}", "2026-01")
            .replace("{max}", "7");
        let res = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete))
            .send()
            .await
            .unwrap();
        // Without credentials or a body a route may refuse, but it exists:
        // an unknown route is a 404 and a wrong method a 405.
        assert!(
            res.status() != 404 && res.status() != 405,
            "{method} {concrete}: {}",
            res.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metered_tool_route_is_in_the_catalog() {
    let app = TestApp::spawn().await;
    let body: Value = app.get_public_json("/api/v1/apis").await;
    let catalog: BTreeSet<(String, String)> = body["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["method"].as_str().unwrap().to_owned(),
                a["route"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (method, path) in TOOL_ROUTES {
        let route = format!("{TOOLS_PREFIX}{path}");
        assert!(
            catalog.contains(&((*method).to_owned(), route.clone())),
            "{method} {route}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_documents_its_failures_with_the_error_body() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    assert!(spec["components"]["schemas"]["ErrorBody"].is_object());
    for (method, path, op) in operations(&spec) {
        if listed(PROBES, &method, &path) {
            continue;
        }
        let responses = op["responses"].as_object().unwrap();
        for (status, response) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                assert!(uses_error_body(response), "{method} {path} {status}: not an ErrorBody");
            }
        }
        assert!(
            uses_error_body(&responses["500"]),
            "{method} {path}: no 500 with the ErrorBody"
        );
        if !listed(NO_CLIENT_ERRORS, &method, &path) {
            assert!(
                responses.keys().any(|s| s.starts_with('4')),
                "{method} {path}: no 4xx response"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_schemes_are_declared_and_each_route_names_what_it_accepts() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["bearerAuth"]["type"], "http");
    assert_eq!(schemes["bearerAuth"]["scheme"], "bearer");
    assert_eq!(schemes["bearerAuth"]["bearerFormat"], "JWT");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    assert!(
        spec["security"].is_null(),
        "no global requirement: public routes need none"
    );

    let bearer = json!([{"bearerAuth": []}]);
    let either = json!([{"bearerAuth": []}, {"apiKey": []}]);
    for (method, path, op) in operations(&spec) {
        let expected = if listed(PUBLIC, &method, &path) {
            Value::Null
        } else if path.starts_with("/api/v1/finance/") || path.starts_with("/api/v1/admin/") {
            bearer.clone()
        } else if path == "/api/v1/auth/logout"
            || path == "/api/v1/me"
            || path.starts_with("/api/v1/api-keys")
            || (path == "/api/v1/billing/cap" && method == "PUT")
            || (path == "/api/v1/billing/alerts" && method == "PUT")
            || (path.starts_with("/api/v1/webhooks/") && method != "GET")
            || (path == "/api/v1/webhooks" && method == "POST")
        {
            // Sessions, the profile, keys and the spending cap's setting
            // need an access token (an API key gets 401
            // `access_token_required`).
            bearer.clone()
        } else {
            either.clone()
        };
        assert_eq!(op["security"], expected, "{method} {path}");
        if !expected.is_null() {
            assert!(op["responses"]["401"].is_object(), "{method} {path}: no 401");
        }
    }
}

/// Checks `value` against `schema` the way a client would read it: every
/// property the value has is one the schema lists, every required one is
/// there, and types and enums match. Returns what does not.
fn mismatches(spec: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(spec, schema);
    if let Some(members) = schema["oneOf"].as_array() {
        let fits = members.iter().any(|m| mismatches(spec, m, value, at).is_empty());
        return if fits {
            vec![]
        } else {
            vec![format!("{at}: {value} fits no oneOf member")]
        };
    }
    let mut problems = Vec::new();
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("allOf").is_some() || schema.get("properties").is_some() => vec!["object"],
        _ => vec![],
    };
    let type_ok = types.is_empty()
        || types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            _ => false,
        });
    if !type_ok {
        problems.push(format!("{at}: {value} is not {types:?}"));
        return problems;
    }
    if let Value::Object(fields) = value {
        let (properties, required) = object_shape(spec, schema);
        // `{"type": "object"}` alone is any object (the spec document
        // itself); `additionalProperties` gives a map's values a schema.
        let free_form = schema.get("properties").is_none() && schema.get("allOf").is_none();
        let additional = &schema["additionalProperties"];
        for (name, field) in fields {
            if properties.contains_key(name) {
                continue;
            }
            if additional.is_object() {
                problems.extend(mismatches(spec, additional, field, &format!("{at}.{name}")));
            } else if !free_form || *additional == Value::Bool(false) {
                problems.push(format!("{at}.{name}: not in the schema"));
            }
        }
        for name in &required {
            if !fields.contains_key(name) {
                problems.push(format!("{at}.{name}: required but missing"));
            }
        }
        for (name, field) in fields {
            if let Some(property) = properties.get(name) {
                problems.extend(mismatches(spec, property, field, &format!("{at}.{name}")));
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            problems.extend(mismatches(spec, item_schema, item, &format!("{at}[{i}]")));
        }
    }
    problems
}

/// Properties and required names of an object schema, through `allOf`.
fn object_shape(spec: &Value, schema: &Value) -> (BTreeMap<String, Value>, BTreeSet<String>) {
    let schema = resolve(spec, schema);
    let mut properties = BTreeMap::new();
    let mut required = BTreeSet::new();
    for member in schema["allOf"].as_array().into_iter().flatten() {
        let (p, r) = object_shape(spec, member);
        properties.extend(p);
        required.extend(r);
    }
    if let Some(p) = schema["properties"].as_object() {
        properties.extend(p.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    required.extend(
        schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(String::from)),
    );
    (properties, required)
}

/// Sends nothing itself: asserts `body`, received as `status` from
/// `method path`, is what the spec says that response is.
fn assert_conforms(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let schema = response_schema(spec, method, path, status);
    assert!(schema.is_object(), "{method} {path} {status}: no JSON schema");
    let problems = mismatches(spec, schema, body, "$");
    assert!(
        problems.is_empty(),
        "{method} {path} {status}: {problems:#?}\nbody: {body:#}"
    );
}

/// Real responses checked against the spec, and which operations had a
/// success response checked.
struct Coverage<'a> {
    spec: &'a Value,
    checked: BTreeSet<(String, String)>,
}

impl<'a> Coverage<'a> {
    fn new(spec: &'a Value) -> Self {
        Self {
            spec,
            checked: BTreeSet::new(),
        }
    }

    /// Asserts `res` has `status` and a JSON body that is what the spec says
    /// `method path` answers with it; returns the body. `path` is the spec's
    /// path template.
    async fn json(&mut self, method: &str, path: &str, status: u16, res: reqwest::Response) -> Value {
        let got = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!(got, status, "{method} {path}: {text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {text}"));
        assert_conforms(self.spec, method, path, status, &body);
        if (200..300).contains(&status) {
            self.checked.insert((method.to_owned(), path.to_owned()));
        }
        body
    }

    /// Asserts `res` has `status` and no body, as the spec documents it.
    async fn empty(&mut self, method: &str, path: &str, status: u16, res: reqwest::Response) {
        let response = &self.spec["paths"][path][method.to_lowercase()]["responses"][status.to_string()];
        assert!(response.is_object(), "{method} {path} does not document {status}");
        assert!(
            response["content"].is_null(),
            "{method} {path} {status} is documented with a body"
        );
        let got = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_eq!((got, text.as_str()), (status, ""), "{method} {path}");
        assert!((200..300).contains(&status));
        self.checked.insert((method.to_owned(), path.to_owned()));
    }
}

const WEBHOOK_SECRET: &str = "whsec_spec_0123456789abcdef0123456789";

async fn probes(app: &TestApp, cov: &mut Coverage<'_>) {
    for path in ["/healthz", "/readyz", "/api/v1/openapi.json"] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        cov.json("GET", path, 200, res).await;
    }
    let res = app.client.get(app.url("/api/v1/apis")).send().await.unwrap();
    cov.json("GET", "/api/v1/apis", 200, res).await;
}

/// The catalog and a price; returns the admin's token.
async fn admin(app: &TestApp, clock: &ManualClock, cov: &mut Coverage<'_>) -> String {
    let admin = app.user_with_role("admin").await;
    let res = app.get_auth("/api/v1/admin/apis", &admin.token).await;
    cov.json("GET", "/api/v1/admin/apis", 200, res).await;
    let res = app
        .post_auth(
            "/api/v1/admin/apis",
            &admin.token,
            &json!({"slug": "spec-extra", "method": "GET", "route": "/api/v1/spec/extra", "name": "Spec extra"}),
        )
        .await;
    let created = cov.json("POST", "/api/v1/admin/apis", 201, res).await;
    let id = created["id"].as_i64().unwrap();
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/admin/apis/{id}")))
        .bearer_auth(&admin.token)
        .json(&json!({"description": "Described", "active": false}))
        .send()
        .await
        .unwrap();
    cov.json("PATCH", "/api/v1/admin/apis/{id}", 200, res).await;
    // A gateway API: its upstream and signing secret in the answers.
    let res = app
        .post_auth(
            "/api/v1/admin/apis",
            &admin.token,
            &json!({"slug": "spec-gateway", "method": "*", "route": "/spec-gateway", "name": "Spec gateway",
                "upstream": {"url": "http://127.0.0.1:9/v1"}}),
        )
        .await;
    let gateway = cov.json("POST", "/api/v1/admin/apis", 201, res).await;
    assert!(gateway["upstream"]["signing_secret"].is_string(), "{gateway}");
    let gateway_id = gateway["id"].as_i64().unwrap();
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{gateway_id}/signing-secret"),
            &admin.token,
            &json!({}),
        )
        .await;
    let rotated = cov
        .json("POST", "/api/v1/admin/apis/{id}/signing-secret", 200, res)
        .await;
    assert!(
        rotated["upstream"]["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    // In force from 2 s on (the clock is moved there): invoices below have
    // amounts worth paying.
    let uuid = api_id(&app.db, "tools-uuid").await;
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{uuid}/prices"),
            &admin.token,
            &json!({"unit_price": "1.00", "free_calls": 0}),
        )
        .await;
    let price = cov.json("POST", "/api/v1/admin/apis/{id}/prices", 201, res).await;
    assert_eq!(price["price"]["status"], "scheduled", "{price}");
    clock.set(at(price["price"]["effective_from"].as_str().unwrap()));
    // A version scheduled for later, listed, then cancelled.
    let res = app
        .post_auth(
            &format!("/api/v1/admin/apis/{uuid}/prices"),
            &admin.token,
            &json!({"unit_price": "9.00", "effective_from": "2027-01"}),
        )
        .await;
    let later = cov.json("POST", "/api/v1/admin/apis/{id}/prices", 201, res).await;
    let res = app
        .get_auth(&format!("/api/v1/admin/apis/{uuid}/prices"), &admin.token)
        .await;
    let prices = cov.json("GET", "/api/v1/admin/apis/{id}/prices", 200, res).await;
    let statuses: Vec<&str> = prices["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.last(), Some(&"scheduled"), "{prices}");
    assert_eq!(statuses[statuses.len() - 2], "in_force", "{prices}");
    let res = app
        .delete_auth(
            &format!("/api/v1/admin/apis/{uuid}/prices/{}", later["price"]["id"]),
            &admin.token,
        )
        .await;
    cov.empty("DELETE", "/api/v1/admin/apis/{id}/prices/{price_id}", 204, res)
        .await;
    // Users: one found by email, then given the finance role.
    let someone = app.new_user().await;
    let res = app
        .get_auth(&format!("/api/v1/admin/users?email={}", someone.email), &admin.token)
        .await;
    let page = cov.json("GET", "/api/v1/admin/users", 200, res).await;
    assert_eq!(page["total"], 1, "{page}");
    let res = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{}", someone.id)))
        .bearer_auth(&admin.token)
        .json(&json!({"role": "finance"}))
        .send()
        .await
        .unwrap();
    let changed = cov.json("PATCH", "/api/v1/admin/users/{id}", 200, res).await;
    assert_eq!(changed["role"], "finance", "{changed}");
    admin.token
}

/// Register, log in, refresh, read and change the profile; returns the
/// access token.
async fn account(app: &TestApp, cov: &mut Coverage<'_>) -> String {
    let email = format!("spec-{}@example.com", Uuid::new_v4().simple());
    let res = app.register(&email, "Spec Reader").await;
    cov.json("POST", "/api/v1/auth/register", 201, res).await;
    let res = app.login(&email, PASSWORD).await;
    let tokens = cov.json("POST", "/api/v1/auth/login", 200, res).await;
    let res = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    let tokens = cov.json("POST", "/api/v1/auth/refresh", 200, res).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let res = app.get_auth("/api/v1/me", &token).await;
    cov.json("GET", "/api/v1/me", 200, res).await;
    let res = app
        .client
        .patch(app.url("/api/v1/me"))
        .bearer_auth(&token)
        .json(&json!({"company": "Spec Ltd", "country": "GB"}))
        .send()
        .await
        .unwrap();
    cov.json("PATCH", "/api/v1/me", 200, res).await;
    token
}

async fn api_keys(app: &TestApp, cov: &mut Coverage<'_>, token: &str) {
    let res = app.post_auth("/api/v1/api-keys", token, &json!({"name": "spec"})).await;
    let key = cov.json("POST", "/api/v1/api-keys", 201, res).await;
    let res = app.get_auth("/api/v1/api-keys", token).await;
    cov.json("GET", "/api/v1/api-keys", 200, res).await;
    let id = key["id"].as_str().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    cov.empty("DELETE", "/api/v1/api-keys/{id}", 204, res).await;
}

/// Every metered tool once.
async fn tools(app: &TestApp, cov: &mut Coverage<'_>, token: &str) {
    for (url, path) in [
        ("/api/v1/tools/uuid", "/api/v1/tools/uuid"),
        ("/api/v1/tools/random?min=1&max=3", "/api/v1/tools/random"),
        ("/api/v1/tools/random/7", "/api/v1/tools/random/{max}"),
        ("/api/v1/tools/time?tz=Europe/Paris", "/api/v1/tools/time"),
    ] {
        let res = app.get_auth(url, token).await;
        cov.json("GET", path, 200, res).await;
    }
    for (path, body) in [
        ("/api/v1/tools/hash", json!({"data": "abc"})),
        ("/api/v1/tools/echo", json!({"any": ["json", 1]})),
    ] {
        let res = app.post_auth(path, token, &body).await;
        cov.json("POST", path, 200, res).await;
    }
}

/// Usage and cost, this month and a given one (one line at least).
async fn usage_and_cost(app: &TestApp, cov: &mut Coverage<'_>, token: &str) {
    app.flush_meter().await;
    let res = app.get_auth("/api/v1/usage", token).await;
    let usage = cov.json("GET", "/api/v1/usage", 200, res).await;
    assert!(usage["apis"].as_array().is_some_and(|a| !a.is_empty()), "{usage}");
    let res = app.get_auth("/api/v1/billing/current", token).await;
    let statement = cov.json("GET", "/api/v1/billing/current", 200, res).await;
    assert!(
        statement["lines"].as_array().is_some_and(|l| !l.is_empty()),
        "{statement}"
    );
    let res = app.get_auth("/api/v1/billing/periods/2026-02", token).await;
    cov.json("GET", "/api/v1/billing/periods/{period}", 200, res).await;
    // February's calls were counted with their days.
    let res = app.get_auth("/api/v1/usage/daily?from=2026-01-20", token).await;
    let daily = cov.json("GET", "/api/v1/usage/daily", 200, res).await;
    assert!(daily["days"].as_array().is_some_and(|d| !d.is_empty()), "{daily}");
    // A month inserted without days is shown by its monthly total (for a
    // user of its own, removed again so that the closes below see nothing).
    let seeded = app.new_user().await;
    app.sql(&format!(
        "INSERT INTO usage_records (user_id, api_id, period, calls, failed_calls) \
         SELECT '{}', id, DATE '2026-01-01', 7, 1 FROM apis WHERE slug = 'tools-uuid'",
        seeded.id
    ))
    .await;
    let res = app
        .get_auth("/api/v1/usage/daily?from=2026-01-20&api=tools-uuid", &seeded.token)
        .await;
    let daily = cov.json("GET", "/api/v1/usage/daily", 200, res).await;
    assert!(
        daily["monthly_only"].as_array().is_some_and(|m| !m.is_empty()),
        "{daily}"
    );
    app.sql(&format!("DELETE FROM usage_records WHERE user_id = '{}'", seeded.id))
        .await;
}

/// A consumer with `calls` calls to tools-uuid this month.
async fn caller(app: &TestApp, calls: usize) -> String {
    let user = app.new_user().await;
    for _ in 0..calls {
        assert_eq!(app.get_auth("/api/v1/tools/uuid", &user.token).await.status(), 200);
    }
    user.token
}

/// The number and id of the caller's one invoice.
async fn own_invoice(app: &TestApp, token: &str) -> (String, String) {
    let list = app.get_json("/api/v1/invoices", token).await;
    let invoice = &list["invoices"][0];
    (
        invoice["number"].as_str().unwrap().to_owned(),
        invoice["id"].as_str().unwrap().to_owned(),
    )
}

/// Close February, then every finance, invoice and webhook route.
async fn invoices_and_finance(app: &TestApp, clock: &ManualClock, cov: &mut Coverage<'_>, token: &str) {
    let to_void = caller(app, 1).await;
    let to_pay_by_webhook = caller(app, 2).await;
    app.flush_meter().await;
    clock.set(at("2026-03-01T00:11:00Z"));
    let finance = app.user_with_role("finance").await;
    let res = app
        .post_auth("/api/v1/finance/periods/2026-02/close", &finance.token, &json!({}))
        .await;
    let closed = cov
        .json("POST", "/api/v1/finance/periods/{period}/close", 200, res)
        .await;
    assert_eq!(closed["invoices_issued"], 3, "{closed}");
    let res = app
        .get_auth("/api/v1/finance/periods/2026-02/reconciliation", &finance.token)
        .await;
    cov.json("GET", "/api/v1/finance/periods/{period}/reconciliation", 200, res)
        .await;
    let res = app.get_auth("/api/v1/finance/invoices", &finance.token).await;
    cov.json("GET", "/api/v1/finance/invoices", 200, res).await;
    let res = app
        .get_auth(
            "/api/v1/finance/invoices/export?period=2026-02&format=json",
            &finance.token,
        )
        .await;
    let rows = cov.json("GET", "/api/v1/finance/invoices/export", 200, res).await;
    assert!(rows.as_array().is_some_and(|r| !r.is_empty()), "{rows}");

    let res = app.get_auth("/api/v1/invoices", token).await;
    cov.json("GET", "/api/v1/invoices", 200, res).await;
    let (_, id) = own_invoice(app, token).await;
    let res = app.get_auth(&format!("/api/v1/invoices/{id}"), token).await;
    let detail = cov.json("GET", "/api/v1/invoices/{id}", 200, res).await;
    assert!(detail["lines"].as_array().is_some_and(|l| !l.is_empty()), "{detail}");
    let res = app
        .get_auth(&format!("/api/v1/finance/invoices/{id}"), &finance.token)
        .await;
    cov.json("GET", "/api/v1/finance/invoices/{id}", 200, res).await;
    let payment = json!({"amount": "0.50", "reference": "spec-wire-1", "method": "wire"});
    let path = format!("/api/v1/finance/invoices/{id}/payments");
    let res = app.post_auth(&path, &finance.token, &payment).await;
    cov.json("POST", "/api/v1/finance/invoices/{id}/payments", 201, res)
        .await;
    let res = app.post_auth(&path, &finance.token, &payment).await;
    cov.json("POST", "/api/v1/finance/invoices/{id}/payments", 200, res)
        .await;

    let (_, void_id) = own_invoice(app, &to_void).await;
    let res = app
        .post_auth(
            &format!("/api/v1/finance/invoices/{void_id}/void"),
            &finance.token,
            &json!({}),
        )
        .await;
    cov.json("POST", "/api/v1/finance/invoices/{id}/void", 200, res).await;

    let (number, _) = own_invoice(app, &to_pay_by_webhook).await;
    let now = {
        use payg::domain::Clock;
        clock.now().timestamp()
    };
    let webhook = |event: String| {
        let signature = format!(
            "t={now},v1={}",
            payg::billing::payments::sign(WEBHOOK_SECRET.as_bytes(), now, event.as_bytes())
        );
        app.client
            .post(app.url("/api/v1/webhooks/payments"))
            .header("content-type", "application/json")
            .header("Payg-Signature", signature)
            .body(event)
            .send()
    };
    let event = json!({"id": "evt_spec_1", "type": "payment.succeeded", "invoice_number": number,
                       "amount": "2.00", "currency": "USD", "reference": "ch_spec_1"})
    .to_string();
    let res = webhook(event.clone()).await.unwrap();
    cov.json("POST", "/api/v1/webhooks/payments", 201, res).await;
    let res = webhook(event).await.unwrap();
    cov.json("POST", "/api/v1/webhooks/payments", 200, res).await;

    // Prepaid credit: a top-up by finance and by an event, the ledger both ways.
    let me = app.get_json("/api/v1/me", token).await;
    let user_id = me["id"].as_str().unwrap().to_owned();
    let top_up = json!({"amount": "5.00", "reference": "spec-credit-1"});
    let path = format!("/api/v1/finance/users/{user_id}/credits");
    let res = app.post_auth(&path, &finance.token, &top_up).await;
    cov.json("POST", "/api/v1/finance/users/{id}/credits", 201, res).await;
    let res = app.post_auth(&path, &finance.token, &top_up).await;
    cov.json("POST", "/api/v1/finance/users/{id}/credits", 200, res).await;
    let event = json!({"id": "evt_spec_2", "type": "credits.purchased", "user_id": user_id,
                       "amount": "1.00", "currency": "USD", "reference": "ch_spec_credit"})
    .to_string();
    let res = webhook(event.clone()).await.unwrap();
    cov.json("POST", "/api/v1/webhooks/payments", 201, res).await;
    let res = app.get_auth(&path, &finance.token).await;
    let ledger = cov.json("GET", "/api/v1/finance/users/{id}/credits", 200, res).await;
    assert_eq!(ledger["balance"], "6.00", "{ledger}");
    let res = app.get_auth("/api/v1/credits", token).await;
    cov.json("GET", "/api/v1/credits", 200, res).await;

    // Spending caps: finance's (with prepaid-only), the user's own under it.
    let put = |path: String, token: String, body: Value| {
        let request = app.client.put(app.url(&path)).bearer_auth(token).json(&body);
        async move { request.send().await.unwrap() }
    };
    let cap_path = format!("/api/v1/finance/users/{user_id}/cap");
    let res = put(
        cap_path.clone(),
        finance.token.clone(),
        json!({"amount": "100.00", "prepaid_only": false}),
    )
    .await;
    let cap = cov.json("PUT", "/api/v1/finance/users/{id}/cap", 200, res).await;
    assert_eq!(cap["finance_cap"], "100.00", "{cap}");
    let res = app.get_auth(&cap_path, &finance.token).await;
    cov.json("GET", "/api/v1/finance/users/{id}/cap", 200, res).await;
    let res = put(
        "/api/v1/billing/cap".to_owned(),
        token.to_owned(),
        json!({"amount": "50"}),
    )
    .await;
    let cap = cov.json("PUT", "/api/v1/billing/cap", 200, res).await;
    assert_eq!(
        (cap["amount"].as_str(), cap["user_cap"].as_str()),
        (Some("50.00"), Some("50.00"))
    );
    let res = app.get_auth("/api/v1/billing/cap", token).await;
    cov.json("GET", "/api/v1/billing/cap", 200, res).await;
    let res = put(
        "/api/v1/billing/cap".to_owned(),
        token.to_owned(),
        json!({"amount": null}),
    )
    .await;
    cov.json("PUT", "/api/v1/billing/cap", 409, res).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_have_exactly_the_fields_of_their_schemas() {
    let clock = Arc::new(ManualClock::new(at("2026-02-10T00:00:00Z")));
    let app = TestApp::builder()
        .clock(clock.clone())
        .env("PAYG_CLOSE_GRACE", "876000h")
        .env("PAYG_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .spawn()
        .await;
    let spec = fetch_spec(&app).await;
    let mut cov = Coverage::new(&spec);

    probes(&app, &mut cov).await;
    admin(&app, &clock, &mut cov).await;
    let token = account(&app, &mut cov).await;
    api_keys(&app, &mut cov, &token).await;
    tools(&app, &mut cov, &token).await;
    usage_and_cost(&app, &mut cov, &token).await;
    invoices_and_finance(&app, &clock, &mut cov, &token).await;
    webhooks(&app, &mut cov, &token).await;

    // Failures have the error body.
    let res = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    cov.json("GET", "/api/v1/me", 401, res).await;
    let res = app
        .get_auth(&format!("/api/v1/invoices/{}", Uuid::new_v4()), &token)
        .await;
    cov.json("GET", "/api/v1/invoices/{id}", 404, res).await;

    // Last: it ends the session.
    let res = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    cov.empty("POST", "/api/v1/auth/logout", 204, res).await;

    let missing: Vec<String> = operations(&spec)
        .into_iter()
        .filter(|(method, path, _)| !cov.checked.contains(&(method.clone(), path.clone())))
        .map(|(method, path, _)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "operations with no success response checked against their schema: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_checker_notices_extra_missing_and_mistyped_fields() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    let user = json!({"id": Uuid::new_v4(), "email": "a@example.com", "role": "consumer"});
    let schema = response_schema(&spec, "GET", "/api/v1/me", 200);
    let problems = mismatches(&spec, schema, &json!({"surprise": 1}), "$");
    assert!(problems.iter().any(|p| p.contains("surprise")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("required")), "{problems:?}");
    let problems = mismatches(&spec, schema, &json!({"role": "emperor"}), "$");
    assert!(problems.iter().any(|p| p.contains("emperor")), "{problems:?}");
    assert!(
        !mismatches(&spec, schema, &user, "$").is_empty(),
        "a partial user is not a User"
    );
    // An object schema without properties is any object, unless it says otherwise.
    let any = json!({"type": "object"});
    assert!(mismatches(&spec, &any, &json!({"x": 1}), "$").is_empty());
    let none = json!({"type": "object", "additionalProperties": false});
    assert!(!mismatches(&spec, &none, &json!({"x": 1}), "$").is_empty());
    let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    assert!(mismatches(&spec, &map, &json!({"x": "ok"}), "$").is_empty());
    assert!(!mismatches(&spec, &map, &json!({"x": 1}), "$").is_empty());
}

/// utoipa turns an inlined schema with a field doc comment or example into
/// `allOf: [<schema>, {"type": "object", …}]`, which no value satisfies:
/// schemathesis cannot generate a body, and a generated client cannot send
/// one. Field docs of inlined types go on the struct instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schema_is_unsatisfiable_by_an_all_of_with_an_empty_object() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;
    fn walk(value: &Value, at: &str, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(all)) = map.get("allOf") {
                    let typed: BTreeSet<&str> = all.iter().filter_map(|m| m["type"].as_str()).collect();
                    if typed.len() > 1 {
                        found.push(format!("{at}: allOf of types {typed:?}"));
                    }
                    let empty_object = |m: &Value| {
                        m["type"] == "object"
                            && m.get("properties").is_none()
                            && m.get("additionalProperties").is_none()
                    };
                    if all.len() > 1 && all.iter().any(empty_object) {
                        found.push(format!("{at}: allOf with an empty object"));
                    }
                }
                for (k, v) in map {
                    walk(v, &format!("{at}/{k}"), found);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, &format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(&spec, "", &mut found);
    assert!(found.is_empty(), "{found:#?}");
}

/// Alerts and webhook endpoints, a consumer's and an admin's, with one
/// delivery (written as the outbox would) to log and redeliver.
async fn webhooks(app: &TestApp, cov: &mut Coverage<'_>, token: &str) {
    let res = app
        .client
        .put(app.url("/api/v1/billing/alerts"))
        .bearer_auth(token)
        .json(&json!({"thresholds": ["5.00"], "credits_low_below": "1.00"}))
        .send()
        .await
        .unwrap();
    cov.json("PUT", "/api/v1/billing/alerts", 200, res).await;
    let res = app.get_auth("/api/v1/billing/alerts", token).await;
    cov.json("GET", "/api/v1/billing/alerts", 200, res).await;

    let admin = app.user_with_role("admin").await;
    for (base, token) in [
        ("/api/v1/webhooks", token),
        ("/api/v1/admin/webhooks", admin.token.as_str()),
    ] {
        let res = app
            .post_auth(
                base,
                token,
                &json!({"url": "https://hooks.example.com/payg", "event_types": ["invoice.paid"]}),
            )
            .await;
        let created = cov.json("POST", base, 201, res).await;
        let id = created["id"].as_str().unwrap().to_owned();
        let one = format!("{base}/{{id}}");
        let res = app.get_auth(base, token).await;
        cov.json("GET", base, 200, res).await;
        let res = app.get_auth(&format!("{base}/{id}"), token).await;
        cov.json("GET", &one, 200, res).await;
        let res = app
            .client
            .patch(app.url(&format!("{base}/{id}")))
            .bearer_auth(token)
            .json(&json!({"enabled": false}))
            .send()
            .await
            .unwrap();
        cov.json("PATCH", &one, 200, res).await;
        let res = app.post_auth(&format!("{base}/{id}/rotate"), token, &json!({})).await;
        cov.json("POST", &format!("{base}/{{id}}/rotate"), 200, res).await;
        // One failed delivery, as the outbox and the dispatcher leave it.
        let event = Uuid::new_v4();
        let delivery = Uuid::new_v4();
        app.sql(&format!(
            "INSERT INTO outbound_events (id, event_type, user_id, dedupe_key, payload, created_at) \
             SELECT '{event}', 'invoice.paid', id, 'test:{event}', '{{\"type\": \"invoice.paid\"}}', now() FROM users LIMIT 1; \
             INSERT INTO webhook_deliveries (id, event_id, endpoint_id, event_type, state, attempts, next_attempt_at, \
               last_attempt_at, last_status, last_error, created_at) \
             VALUES ('{delivery}', '{event}', '{id}', 'invoice.paid', 'failed', 1, now(), now(), 500, 'the endpoint answered 500', now()); \
             INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status, error, duration_ms) \
             VALUES ('{delivery}', 1, now(), 500, 'the endpoint answered 500', 12)"
        ))
        .await;
        let res = app.get_auth(&format!("{base}/{id}/deliveries"), token).await;
        let page = cov.json("GET", &format!("{base}/{{id}}/deliveries"), 200, res).await;
        assert_eq!(page["items"][0]["attempt_log"][0]["status"], 500, "{page}");
        let res = app
            .post_auth(
                &format!("{base}/{id}/deliveries/{delivery}/redeliver"),
                token,
                &json!({}),
            )
            .await;
        cov.json(
            "POST",
            &format!("{base}/{{id}}/deliveries/{{delivery_id}}/redeliver"),
            202,
            res,
        )
        .await;
    }
}
