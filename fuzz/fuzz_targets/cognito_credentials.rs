//! Cognito's answer as the SDK hands it to us is untrusted: `credentials_from` must never
//! panic, and must accept only complete credentials.
#![no_main]

use arbitrary::Arbitrary;
use aws_sdk_cognitoidentity::types::Credentials;
use aws_smithy_types::DateTime;
use cognito_unauth_controller::aws::cognito::credentials_from;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    present: bool,
    access_key_id: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<(i64, u32)>,
}

fuzz_target!(|i: Input| {
    let answer = i.present.then(|| {
        Credentials::builder()
            .set_access_key_id(i.access_key_id.clone())
            .set_secret_key(i.secret_key.clone())
            .set_session_token(i.session_token.clone())
            .set_expiration(i.expiration.map(|(s, n)| DateTime::from_secs_and_nanos(s, n % 1_000_000_000)))
            .build()
    });
    if let Ok(c) = credentials_from(answer) {
        assert!(i.present);
        assert!(!c.access_key_id.is_empty() && !c.secret_access_key.is_empty() && !c.session_token.is_empty());
        assert_eq!(Some(&c.access_key_id), i.access_key_id.as_ref());
    }
});
