//! An external Confluent-compatible registry as the codec's [`SchemaSource`], over HTTP.

use std::time::Duration;

use fleetledger_schemas::{Error, RecordCodec, Result, SchemaFuture, SchemaSource};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

fn registry_error(e: SRCError) -> Error {
    let mut message = e.error.clone();
    if let Some(cause) = &e.cause {
        message.push_str(": ");
        message.push_str(cause);
    }
    Error::Registry {
        message,
        retriable: e.retriable,
    }
}

/// A Confluent-compatible registry over HTTP (`POST /subjects/{s}/versions`,
/// `GET /schemas/ids/{id}`), with a 10 s timeout per request.
#[derive(Debug)]
pub struct HttpSchemaSource {
    settings: SrSettings,
}

impl HttpSchemaSource {
    /// A source for the registry at `url` (e.g. `http://127.0.0.1:7070/registry`).
    pub fn new(url: &str) -> Result<Self> {
        Self::build(url, None)
    }

    /// A source that sends `Authorization: Bearer TOKEN` (a registry that needs it to
    /// register schemas, as fleetledger's embedded one does).
    pub fn with_bearer(url: &str, token: &str) -> Result<Self> {
        Self::build(url, Some(token))
    }

    fn build(url: &str, token: Option<&str>) -> Result<Self> {
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        builder.set_timeout(Duration::from_secs(10)).no_proxy();
        if let Some(t) = token {
            builder.set_token_authorization(t);
        }
        let settings = builder.build().map_err(registry_error)?;
        Ok(HttpSchemaSource { settings })
    }
}

impl SchemaSource for HttpSchemaSource {
    fn register<'a>(&'a self, subject: &'a str, schema: &'a str) -> SchemaFuture<'a, u32> {
        Box::pin(async move {
            let supplied = SuppliedSchema::new(
                Some(subject.to_owned()),
                SchemaType::Avro,
                schema.to_owned(),
            );
            let registered = post_schema(&self.settings, subject.to_owned(), supplied)
                .await
                .map_err(registry_error)?;
            Ok(registered.id)
        })
    }

    fn schema_by_id(&self, id: u32) -> SchemaFuture<'_, String> {
        Box::pin(async move {
            let registered = get_schema_by_id(id, &self.settings)
                .await
                .map_err(registry_error)?;
            Ok(registered.schema)
        })
    }
}

/// A codec over the registry at `url` (e.g. `http://127.0.0.1:7070/registry`).
pub fn http_codec(url: &str) -> Result<RecordCodec> {
    Ok(RecordCodec::with_source(std::sync::Arc::new(
        HttpSchemaSource::new(url)?,
    )))
}
