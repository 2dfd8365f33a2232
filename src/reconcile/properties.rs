//! Property tests for the pure steps: the renewal schedule and backoff for any lifetime,
//! renewBefore and seed; rendering and reading the Secret back; condition transitions;
//! Go durations.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use proptest::prelude::*;

use crate::aws::cognito::Credentials;
use crate::crd::conditions::ready_of;
use crate::reconcile::schedule::{BACKOFF_CAP, backoff, parse_go_duration, renewal_time};
use crate::reconcile::secret::{Owner, Placement, Provenance, inspect, render};
use crate::reconcile::status::{Builder, time};

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("in range")
}

fn creds_strategy() -> impl Strategy<Value = Credentials> {
    (
        ".{1,40}",
        ".{1,80}",
        ".{1,400}",
        1_700_000_000i64..2_000_000_000,
        0u32..1_000_000_000,
    )
        .prop_map(|(a, s, t, secs, nanos)| Credentials {
            access_key_id: a,
            secret_access_key: s,
            session_token: t,
            expiration: Timestamp::new(secs, nanos as i32).expect("in range"),
        })
}

/// `c` rendered into a Secret owned by uid `u`, mounted at `/m`.
fn rendered(c: &Credentials) -> k8s_openapi::api::core::v1::Secret {
    let owner = Owner {
        api_version: "v".into(),
        kind: "K".into(),
        name: "n".into(),
        uid: "u".into(),
    };
    let prov = Provenance {
        identity_pool_id: "us-east-1:00000000-0000-0000-0000-000000000000".into(),
        identity_id: "us-east-1:11111111-0000-0000-0000-000000000000".into(),
        region: "us-east-1".into(),
        custom_role_arn: None,
        session: None,
        assumed_role_arn: None,
        issued_at: ts(1_700_000_000),
        force_token: None,
    };
    render(
        &Placement {
            name: "n",
            namespace: "ns",
            owner: &owner,
            template: None,
            mount_path: "/m",
        },
        c,
        &prov,
    )
}

proptest! {
    #[test]
    fn renewal_is_inside_the_lifetime_and_where_the_rule_says(
        issued in 1_700_000_000i64..2_000_000_000,
        lifetime in 1i64..86_400,
        renew_before in 0u64..7_200,
        seed in ".*",
    ) {
        let (i, e) = (ts(issued), ts(issued + lifetime));
        let r = renewal_time(i, e, Duration::from_secs(renew_before), &seed);
        prop_assert!(r >= i && r <= e);
        let life = SignedDuration::from_secs(lifetime);
        let jitter = (life / 20).min(SignedDuration::from_secs(60));
        let base = if (renew_before as i64) < lifetime {
            e - SignedDuration::from_secs(renew_before as i64)
        } else {
            i + life * 2 / 3
        };
        prop_assert!(r <= base, "{r} after {base}");
        prop_assert!(r >= (base - jitter).max(i), "{r} more than the jitter before {base}");
        prop_assert_eq!(r, renewal_time(i, e, Duration::from_secs(renew_before), &seed));
    }

    #[test]
    fn backoff_is_bounded_and_grows(attempt in 1u32..10_000, seed in ".*") {
        let d = backoff(attempt, &seed);
        prop_assert!(d <= BACKOFF_CAP);
        prop_assert!(d >= Duration::from_millis(2500));
        // The step by hand: 5 s doubling (5, 10, 20, 40, 80, 160), then 300 s from the 7th.
        let step = match attempt { 1..=6 => 5u64 << (attempt - 1), _ => 300 };
        let step = Duration::from_secs(step);
        prop_assert!(d >= step / 2 && d <= step);
    }

    #[test]
    fn go_durations_parse_to_their_sum(h in 0u64..100, m in 0u64..600, s in 0u64..6000, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        prop_assert_eq!(parse_go_duration(&text), Ok(want));
    }

    #[test]
    fn parse_go_duration_never_panics(text in ".{0,40}") {
        let _ = parse_go_duration(&text);
    }

    #[test]
    fn a_rendered_secret_reads_back_intact(c in creds_strategy(), region in "[a-z]{2}-[a-z]{4,9}-[1-9]") {
        let owner = Owner { api_version: "v".into(), kind: "K".into(), name: "n".into(), uid: "u".into() };
        let prov = Provenance {
            identity_pool_id: format!("{region}:00000000-0000-0000-0000-000000000000"),
            identity_id: format!("{region}:11111111-0000-0000-0000-000000000000"),
            region: region.clone(),
            custom_role_arn: None,
            session: None,
            assumed_role_arn: None,
            issued_at: ts(1_700_000_000),
            force_token: None,
        };
        let s = render(&Placement { name: "n", namespace: "ns", owner: &owner, template: None, mount_path: "/m" }, &c, &prov);
        let o = inspect(&s, "u", "/m", None);
        prop_assert!(o.owned && o.intact);
        let back = o.credentials.expect("credentials");
        prop_assert_eq!(&back.access_key_id, &c.access_key_id);
        prop_assert_eq!(&back.secret_access_key, &c.secret_access_key);
        prop_assert_eq!(&back.session_token, &c.session_token);
        prop_assert_eq!(back.expiration, ts(c.expiration.as_second()));
    }

    #[test]
    fn any_change_to_any_data_byte_is_noticed(c in creds_strategy(), pick in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut s = rendered(&c);
        let data = s.data.as_mut().expect("data");
        let keys: Vec<String> = data.keys().cloned().collect();
        let key = pick.get(&keys).clone();
        let value: &mut ByteString = data.get_mut(&key).expect("value");
        let at = pick.index(value.0.len().max(1)).min(value.0.len().saturating_sub(1));
        prop_assume!(value.0.get(at) != Some(&byte));
        if value.0.is_empty() { value.0.push(byte) } else { value.0[at] = byte }
        prop_assert!(!inspect(&s, "u", "/m", None).intact, "an edit of {} went unnoticed", key);
    }

    #[test]
    fn keys_someone_else_adds_are_not_drift(c in creds_strategy(), key in "[A-Za-z0-9._-]{1,30}", value in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(!crate::reconcile::secret::is_our_key(&key));
        let mut s = rendered(&c);
        s.data.as_mut().expect("data").insert(key, ByteString(value));
        let o = inspect(&s, "u", "/m", None);
        prop_assert!(o.intact && o.current_layout, "a foreign key made the Secret drift");
    }

    #[test]
    fn last_transition_time_is_the_last_flip(flips in prop::collection::vec(any::<bool>(), 1..30)) {
        let mut conds = vec![];
        let mut last_flip = None;
        let mut prev: Option<bool> = None;
        for (t, ok) in flips.iter().enumerate() {
            let now = ts(1_800_000_000 + t as i64);
            let old = crate::crd::CognitoUnauthCredentialStatus { conditions: conds.clone(), ..Default::default() };
            let mut b = Builder::new(old, Some(1), now);
            if *ok { b.ready("CredentialsIssued", String::new()) } else { b.not_ready("Throttled", String::new()) }
            let c = ready_of(b.next()).expect("ready").clone();
            if prev != Some(*ok) {
                last_flip = Some(now);
            }
            prev = Some(*ok);
            prop_assert_eq!(&c.last_transition_time, &time(last_flip.expect("set")));
            conds = vec![c];
        }
    }
}
