//! The OpenAPI 3.1 document of the HTTP API (`GET /openapi.json`), written by hand next to the
//! code it describes; a test checks that its paths and methods are exactly `api::routes()`.

use serde_json::{json, Value};

/// Error statuses every room route may answer.
fn errors(codes: &[u16]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let description = match code {
            400 => "Bad input (room id, query parameter, body); nothing was applied",
            401 => "No valid credential",
            403 => "The credential does not cover this room, or is read-only and this is a write",
            404 => "No such room: nothing stored and not loaded",
            409 => "The room is served by another node",
            413 => "The body is over max_message_bytes, or the document would pass max_doc_bytes",
            429 => "Too many failed auth attempts from this address",
            503 => "Storage or auth unavailable, or the server is shutting down",
            _ => "Error",
        };
        out.insert(
            code.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn with(mut ok: Value, errs: Value) -> Value {
    if let (Some(o), Value::Object(e)) = (ok.as_object_mut(), errs) {
        o.extend(e);
    }
    ok
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({"200": {"description": description, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}})
}

/// The document.
pub(crate) fn document() -> Value {
    let room_params = json!([
        {"name": "party", "in": "path", "required": true, "description": "The party (`main` for plain y-websocket paths)", "schema": {"$ref": "#/components/schemas/RoomId"}},
        {"name": "room", "in": "path", "required": true, "description": "The room id, raw as in the WebSocket path", "schema": {"$ref": "#/components/schemas/RoomId"}},
    ]);
    let read = [400, 401, 403, 404, 409, 429, 503];
    let write = [400, 401, 403, 409, 413, 429, 503];
    let types_param = json!({"name": "types", "in": "query", "required": false,
        "description": "Kinds of root types, NAME:KIND separated by commas (KIND: text, map, array, xml); added to `[parties.NAME] types`",
        "schema": {"type": "string", "pattern": "^\\s*([^,:=\\s][^,:=]*[:=]\\s*(text|map|array|xml)\\s*)?(,\\s*([^,:=\\s][^,:=]*[:=]\\s*(text|map|array|xml)\\s*)?)*$"}, "example": "content:text,meta:map"});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Ripple HTTP API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read and change Yjs rooms from an app's backend. Writes take the same path as a client's update: applied in the room's turn, durable before the answer, then broadcast. Authorization: Bearer with the admin token, or a client token whose access covers the room (read access: GET only)."
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/openapi.json": {"get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [{}],
                "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}
            }},
            "/api/v1/rooms": {"get": {
                "summary": "Stored and loaded rooms, by party and room id, paginated",
                "operationId": "listRooms",
                "parameters": [
                    {"name": "party", "in": "query", "required": false, "schema": {"type": "string"}},
                    {"name": "prefix", "in": "query", "required": false, "description": "Only rooms whose id starts with this", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {"name": "cursor", "in": "query", "required": false, "description": "`next_cursor` of the previous page", "schema": {"type": "string"}}
                ],
                "responses": with(ok_json("One page of rooms", "RoomList"), errors(&[400, 401, 429, 503]))
            }},
            "/api/v1/rooms/{party}/{room}": {
                "parameters": room_params,
                "get": {
                    "summary": "One room's info",
                    "operationId": "getRoom",
                    "responses": with(ok_json("The room", "RoomInfo"), errors(&read))
                },
                "delete": {
                    "summary": "Close the room's connections (code 4004) and delete its stored state",
                    "operationId": "deleteRoom",
                    "responses": with(
                        json!({"200": {"description": "Deleted", "content": {"application/json": {"schema": {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}}}}}}),
                        errors(&[400, 401, 403, 404, 409, 429, 503]))
                }
            },
            "/api/v1/rooms/{party}/{room}/state": {
                "parameters": room_params,
                "get": {
                    "summary": "The document as one Yjs v1 update, or what a state vector lacks",
                    "operationId": "getState",
                    "parameters": [{"name": "sv", "in": "query", "required": false,
                        "description": "A Yjs state vector, base64 (standard or URL-safe, padding optional): only what it lacks is returned. Empty or left out: the whole document",
                        "schema": {"type": "string"}}],
                    "responses": with(
                        json!({"200": {"description": "A Yjs v1 update", "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}),
                        errors(&read))
                }
            },
            "/api/v1/rooms/{party}/{room}/update": {
                "parameters": room_params,
                "post": {
                    "summary": "Apply a Yjs v1 update like a client's (durable before the answer, then broadcast)",
                    "operationId": "postUpdate",
                    "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                    "responses": with(ok_json("Applied (and stored when the room persists)", "Applied"), errors(&write))
                }
            },
            "/api/v1/rooms/{party}/{room}/json": {
                "parameters": room_params,
                "get": {
                    "summary": "Root types as JSON",
                    "operationId": "getJson",
                    "parameters": [types_param],
                    "responses": with(ok_json("The root types", "JsonDocument"), errors(&read))
                },
                "post": {
                    "summary": "Edit root types with JSON ops, in one transaction (all or nothing)",
                    "operationId": "postJson",
                    "parameters": [types_param],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ops"}}}},
                    "responses": with(ok_json("Applied", "Applied"), errors(&write))
                }
            },
            "/api/v1/rooms/{party}/{room}/close": {
                "parameters": room_params,
                "post": {
                    "summary": "Close the room's connections (code 4002): all, or one user's",
                    "operationId": "closeRoom",
                    "parameters": [{"name": "user", "in": "query", "required": false, "description": "Only this user's connections", "schema": {"type": "string"}}],
                    "responses": with(
                        json!({"200": {"description": "How many connections were closed", "content": {"application/json": {"schema": {"type": "object", "required": ["closed"], "properties": {"closed": {"type": "integer", "minimum": 0}}}}}}}),
                        errors(&[400, 401, 403, 409, 429, 503]))
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "RoomId": {"type": "string", "minLength": 1, "description": "Raw as in the WebSocket path (not percent-decoded): up to max_room_id_len bytes of URL path-segment characters and % escapes; '.' and '..' are refused"},
                "Error": {"type": "object", "required": ["error", "detail"], "properties": {
                    "error": {"type": "string", "enum": ["bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed", "owned_elsewhere", "too_large", "too_many_requests", "unavailable", "internal"]},
                    "detail": {"type": "string"}}},
                "RoomInfo": {"type": "object", "required": ["party", "room", "stored_bytes", "update_count", "last_change_ms", "loaded", "connections"], "properties": {
                    "party": {"type": "string"},
                    "room": {"type": "string"},
                    "stored_bytes": {"type": "integer", "minimum": 0},
                    "update_count": {"type": "integer", "minimum": 0, "description": "Log entries after the snapshot"},
                    "last_change_ms": {"type": ["integer", "null"], "description": "Unix ms of the last stored write; null when nothing is stored"},
                    "loaded": {"type": "boolean"},
                    "connections": {"type": "integer", "minimum": 0}}},
                "RoomList": {"type": "object", "required": ["rooms", "next_cursor"], "properties": {
                    "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/RoomInfo"}},
                    "next_cursor": {"type": ["string", "null"]}}},
                "Applied": {"type": "object", "required": ["seq", "changed"], "properties": {
                    "seq": {"type": "integer", "minimum": 0, "description": "The room's last stored sequence number once this was stored (0 without persistence)"},
                    "changed": {"type": "boolean", "description": "False when the room already had all of it (nothing stored or relayed)"}}},
                "JsonDocument": {"type": "object", "required": ["party", "room", "data", "kinds", "guess_rule"], "properties": {
                    "party": {"type": "string"},
                    "room": {"type": "string"},
                    "data": {"type": "object", "description": "Root name to value: text and xml as strings, map as an object, array as an array"},
                    "kinds": {"type": "object", "additionalProperties": {"type": "object", "required": ["kind", "guessed"], "properties": {
                        "kind": {"type": "string", "enum": ["text", "map", "array", "xml"]},
                        "guessed": {"type": "boolean"}}}},
                    "guess_rule": {"type": "string"}}},
                "Ops": {"type": "object", "required": ["ops"], "additionalProperties": false, "properties": {
                    "ops": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/Op"}}}},
                "Op": {"oneOf": [
                    {"type": "object", "required": ["map", "set"], "additionalProperties": false, "properties": {"map": {"type": "string", "minLength": 1}, "set": {"type": "object"}}},
                    {"type": "object", "required": ["map", "delete"], "additionalProperties": false, "properties": {"map": {"type": "string", "minLength": 1}, "delete": {"type": "array", "items": {"type": "string"}}}},
                    {"type": "object", "required": ["text", "insert"], "additionalProperties": false, "properties": {"text": {"type": "string", "minLength": 1}, "insert": {"type": "string"}, "at": {"type": "integer", "minimum": 0, "description": "Characters from the start; left out: the end"}}},
                    {"type": "object", "required": ["text", "delete", "at"], "additionalProperties": false, "properties": {"text": {"type": "string", "minLength": 1}, "delete": {"type": "integer", "minimum": 0}, "at": {"type": "integer", "minimum": 0}}},
                    {"type": "object", "required": ["array", "push"], "additionalProperties": false, "properties": {"array": {"type": "string", "minLength": 1}, "push": {"type": "array"}}},
                    {"type": "object", "required": ["array", "insert", "at"], "additionalProperties": false, "properties": {"array": {"type": "string", "minLength": 1}, "insert": {"type": "array"}, "at": {"type": "integer", "minimum": 0}}},
                    {"type": "object", "required": ["array", "delete", "at"], "additionalProperties": false, "properties": {"array": {"type": "string", "minLength": 1}, "delete": {"type": "integer", "minimum": 0}, "at": {"type": "integer", "minimum": 0}}}
                ]}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_describes_exactly_the_routes_of_the_router() {
        let doc = document();
        let mut in_spec = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if method != "parameters" {
                    in_spec.insert((path.clone(), method.to_uppercase()));
                }
            }
        }
        let in_router: BTreeSet<(String, String)> = crate::api::routes()
            .into_iter()
            .map(|(path, method, _)| (path.to_owned(), method.to_string()))
            .collect();
        assert_eq!(in_spec, in_router);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
