//! The OpenAPI document at /api/v1/openapi.json against the route tables
//! the server is built from, and against real responses.

use std::collections::{BTreeMap, BTreeSet};

use payg::routes::tools::TOOL_ROUTES;
use payg::routes::{API_PREFIX, API_ROUTES, ROOT_ROUTES, TOOLS_PREFIX};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{PASSWORD, TestApp};

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
    let body: Value = app
        .client
        .get(app.url("/api/v1/apis"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
        } else if path == "/api/v1/auth/logout" {
            // Logout ends an access-token session; an API key gets a 400.
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
        for name in fields.keys() {
            if !properties.contains_key(name) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_responses_have_exactly_the_fields_of_their_schemas() {
    let app = TestApp::spawn().await;
    let spec = fetch_spec(&app).await;

    let email = format!("spec-{}@example.com", Uuid::new_v4().simple());
    let res = app.register(&email, "Spec Reader").await;
    assert_eq!(res.status(), 201);
    assert_conforms(&spec, "POST", "/api/v1/auth/register", 201, &res.json().await.unwrap());

    let res = app.login(&email, PASSWORD).await;
    assert_eq!(res.status(), 200);
    let tokens: Value = res.json().await.unwrap();
    assert_conforms(&spec, "POST", "/api/v1/auth/login", 200, &tokens);
    let token = tokens["access_token"].as_str().unwrap();

    let res = app.get_auth("/api/v1/me", token).await;
    assert_eq!(res.status(), 200);
    assert_conforms(&spec, "GET", "/api/v1/me", 200, &res.json().await.unwrap());

    // One metered call, so the statement has a line to check.
    let res = app.get_auth("/api/v1/tools/uuid", token).await;
    assert_eq!(res.status(), 200);
    assert_conforms(&spec, "GET", "/api/v1/tools/uuid", 200, &res.json().await.unwrap());
    app.flush_meter().await;
    let res = app.get_auth("/api/v1/billing/current", token).await;
    assert_eq!(res.status(), 200);
    let statement: Value = res.json().await.unwrap();
    assert_eq!(statement["lines"].as_array().map(Vec::len), Some(1), "{statement}");
    assert_conforms(&spec, "GET", "/api/v1/billing/current", 200, &statement);

    let res = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_conforms(&spec, "GET", "/api/v1/me", 401, &res.json().await.unwrap());

    let res = app
        .get_auth(&format!("/api/v1/invoices/{}", Uuid::new_v4()), token)
        .await;
    assert_eq!(res.status(), 404);
    assert_conforms(&spec, "GET", "/api/v1/invoices/{id}", 404, &res.json().await.unwrap());

    // The checker itself notices an extra field, a missing one and a wrong type.
    let user = json!({"id": Uuid::new_v4(), "email": email, "role": "consumer"});
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
}
