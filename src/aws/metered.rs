//! Every Cognito and STS call counted and timed in the metrics: the [`Meter`] layer.

use std::sync::Arc;
use std::time::Instant;

use crate::aws::cognito::{Around, CognitoError, Operation, Wrapped};
use crate::common::metrics::Metrics;

/// Records each call in the metrics (`operation`, and `ok` or the error's reason).
pub struct Meter(pub Arc<Metrics>);

/// A Cognito client whose every call is recorded in the metrics.
pub type Metered<C> = Wrapped<Meter, C>;

fn outcome<T>(r: &Result<T, CognitoError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

impl Around for Meter {
    async fn around<T: Send>(
        &self,
        op: Operation,
        _region: &str,
        call: impl Future<Output = Result<T, CognitoError>> + Send,
    ) -> Result<T, CognitoError> {
        let started = Instant::now();
        let r = call.await;
        self.0.request(op.name(), started, outcome(&r));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::cognito::{Cognito, OpenIdToken, RoleSession};
    use crate::aws::fake::{Fake, credentials};

    #[tokio::test]
    async fn every_call_is_counted_under_its_operation_and_outcome() {
        let metrics = Arc::new(Metrics::default());
        let fake = Fake::default();
        fake.fail(
            Operation::GetOpenIdToken,
            CognitoError::Throttled("slow down".into()),
        );
        let metered = Metered::new(Meter(metrics.clone()), fake);
        let session = RoleSession {
            role_arn: "arn:aws:iam::123456789012:role/guest".into(),
            session_name: "s".into(),
            duration_seconds: 900,
        };
        let r = "us-east-1";
        assert!(metered.get_id(r, "pool").await.is_ok());
        assert!(metered.get_credentials(r, "id", None).await.is_ok());
        assert!(metered.caller_identity(r, &credentials()).await.is_ok());
        assert!(metered.get_open_id_token(r, "id").await.is_err());
        let token = OpenIdToken::new("t".into());
        let assumed = metered.assume_role_with_web_identity(r, &session, &token);
        assert!(assumed.await.is_ok());

        let text = metrics.render().expect("render");
        let count = |op: &str, outcome: &str| {
            let series = format!(
                "cognito_unauth_controller_cognito_requests_total{{operation=\"{op}\",outcome=\"{outcome}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series))
                .and_then(|v| v.parse::<f64>().ok())
        };
        for op in Operation::ALL {
            let outcome = if op == Operation::GetOpenIdToken {
                "Throttled"
            } else {
                "ok"
            };
            assert_eq!(count(op.name(), outcome), Some(1.0), "{op:?}\n{text}");
        }
    }
}
