//! `schema/report.schema.json` is generated from the report's types: the committed file must be
//! what [`bnfold::report::schema::generate`] writes (`BNFOLD_UPDATE_SCHEMA=1` rewrites it).

use std::path::Path;

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/report.schema.json");
    let generated = bnfold::report::schema::generate();
    if std::env::var_os("BNFOLD_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        committed == generated,
        "schema/report.schema.json differs from the report's types; \
         run BNFOLD_UPDATE_SCHEMA=1 cargo test --test schema and review the diff"
    );
}
