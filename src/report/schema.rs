//! `schema/report.schema.json`, generated from the report's types in [`super::json`]: the
//! structs that write the JSON are the ones that describe it. A test fails when the committed
//! file differs from [`generate`]; `BNFOLD_UPDATE_SCHEMA=1 cargo test --test schema` rewrites it.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::json::{FoldDocument, InspectDocument, VerifyDocument};

/// The schema's address, as its `$id`.
pub const SCHEMA_ID: &str = "https://github.com/bnfold/bnfold/schema/report.schema.json";

/// The JSON Schema (draft 2020-12) of every report bnfold writes, as the text committed in
/// `schema/report.schema.json`.
pub fn generate() -> String {
    let mut generator = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let documents = [
        generator.subschema_for::<FoldDocument>(),
        generator.subschema_for::<VerifyDocument>(),
        generator.subschema_for::<InspectDocument>(),
    ];
    let definitions: Map<String, Value> = generator.take_definitions(true);
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "bnfold report",
        "description": "The JSON report of `bnfold` (a fold, --check or --dry-run), of \
            `bnfold inspect` and of `bnfold verify`. Keys are written in sorted order and carry \
            no timings: the same input gives the same bytes.",
        "oneOf": documents,
        "$defs": definitions,
    });
    close_objects(&mut root);
    allow_null_numbers(&mut root);
    let mut text = serde_json::to_string_pretty(&root).unwrap_or_default();
    text.push('\n');
    text
}

/// Every object schema that lists its properties allows no others: a key the types do not
/// write is an error in a report, not an extension.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Every float may be null: `serde_json` writes an infinity or a NaN as `null` (an error that
/// overflowed, an SQNR of an exact tensor).
fn allow_null_numbers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.get("type") == Some(&Value::from("number")) {
                map.insert("type".into(), json!(["number", "null"]));
                const NOTE: &str = "Null when not finite.";
                let description = match map.get("description").and_then(Value::as_str) {
                    Some(text) => format!("{text} {NOTE}"),
                    None => NOTE.to_string(),
                };
                map.insert("description".into(), Value::from(description));
            }
            map.values_mut().for_each(allow_null_numbers);
        }
        Value::Array(items) => items.iter_mut().for_each(allow_null_numbers),
        _ => {}
    }
}
