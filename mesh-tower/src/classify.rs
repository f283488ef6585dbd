//! A route's classifier run on an attempt's result (see
//! [`proxyless_core::policy::classify`]).

use crate::BoxError;
use crate::error::outcome_of_error;
use http::Response;
use proxyless_core::policy::Outcome;
use proxyless_core::policy::classify::{Attempt, Class, Classifier};

/// What `classifier` says `attempt` came to. A classifier is the
/// application's code: one that panics is reported and the attempt is
/// classified by default, rather than the panic taking the request (or the
/// connection task polling it) down.
fn run(classifier: &Classifier, attempt: &Attempt<'_>) -> Class {
    let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        classifier.classify(attempt)
    }));
    judged.unwrap_or_else(|_| {
        tracing::error!("a response classifier panicked; the attempt is classified by default");
        attempt.default_class()
    })
}

/// What `classifier` says `result` came to.
pub(crate) fn class_of<RB>(
    classifier: &Classifier,
    result: &Result<Response<RB>, BoxError>,
) -> Class {
    match result {
        Ok(r) => run(
            classifier,
            &Attempt::Response {
                status: r.status(),
                headers: r.headers(),
                grpc_status: crate::grpc::status(r.headers()),
            },
        ),
        Err(e) => run(
            classifier,
            &Attempt::Error {
                outcome: outcome_of_error(&**e),
                error: &**e,
            },
        ),
    }
}

/// How an attempt counts for the endpoint's outlier detection and latency:
/// a response as its route's classifier judged it; an error (no response)
/// as it is, whatever the classifier says of retrying it. A response the
/// classifier judges otherwise than the default would is counted
/// (`mesh_reclassified_total{backend, as}`).
pub(crate) fn outcome_for_endpoint<RB>(
    classifier: &Classifier,
    result: &Result<Response<RB>, BoxError>,
    outcome: Outcome,
    backend: &str,
) -> Outcome {
    let Ok(r) = result else { return outcome };
    let grpc_status = crate::grpc::status(r.headers());
    let attempt = Attempt::Response {
        status: r.status(),
        headers: r.headers(),
        grpc_status,
    };
    let failed = run(classifier, &attempt).is_failure();
    if failed != attempt.default_class().is_failure() {
        let judged = if failed { "failure" } else { "success" };
        metrics::counter!(
            crate::telemetry::metrics::RECLASSIFIED,
            "backend" => backend.to_owned(),
            "as" => judged
        )
        .increment(1);
    }
    Outcome::Classified {
        status: r.status().as_u16(),
        failed,
    }
}
