//! The admission webhook's serving certificate: a CA of our own and a leaf it signs, kept
//! in one Secret (`kubernetes.io/tls`, with `ca.crt` as cert-manager writes it), renewed at
//! two thirds of their lifetimes like the credentials.
//!
//! The API server trusts the `caBundle` in the MutatingWebhookConfiguration, so a CA is
//! replaced in two steps: the new CA joins the bundle (next to the old one, which keeps
//! verifying the leaf being served), and only once that bundle is published does a leaf
//! signed by the new CA replace the old leaf. No moment exists when the API server would
//! refuse the leaf a replica serves.
//!
//! Pure: [`next_step`] decides from the stored bundle and the time; [`apply`] builds the new
//! bundle (rcgen); [`Bundle::from_secret`]/[`Bundle::to_secret_data`] read and write it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Secret data keys (as cert-manager names them).
pub const KEY_CA: &str = "ca.crt";
pub const KEY_CA_KEY: &str = "ca.key";
pub const KEY_CERT: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// Secret annotations: validity (Unix seconds) and the leaf's names and issuer.
pub const ANN_CA_NOT_BEFORE: &str = "cognito.kubecred.io/ca-not-before";
pub const ANN_CA_NOT_AFTER: &str = "cognito.kubecred.io/ca-not-after";
pub const ANN_CERT_NOT_BEFORE: &str = "cognito.kubecred.io/cert-not-before";
pub const ANN_CERT_NOT_AFTER: &str = "cognito.kubecred.io/cert-not-after";
/// The `ca-not-before` of the CA that signed the leaf (which names that CA).
pub const ANN_CERT_ISSUER: &str = "cognito.kubecred.io/cert-issuer";
pub const ANN_DNS_NAMES: &str = "cognito.kubecred.io/dns-names";

/// Clock skew allowed for: certificates are valid from a minute before they are made.
const BACKDATE: i64 = 60;

/// How long the CA and the leaf live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub ca_seconds: i64,
    pub leaf_seconds: i64,
}

/// What the Secret holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// PEM certificates the API server should trust: the current CA first, then the
    /// previous one while it is still valid.
    pub cas: Vec<String>,
    pub ca_key: String,
    pub ca_not_before: i64,
    pub ca_not_after: i64,
    pub cert: String,
    pub key: String,
    pub cert_not_before: i64,
    pub cert_not_after: i64,
    /// `ca_not_before` of the CA that signed `cert`.
    pub cert_issuer: i64,
    pub dns_names: Vec<String>,
}

// Never print keys.
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("cas", &self.cas.len())
            .field("ca_not_before", &self.ca_not_before)
            .field("ca_not_after", &self.ca_not_after)
            .field("cert_not_before", &self.cert_not_before)
            .field("cert_not_after", &self.cert_not_after)
            .field("cert_issuer", &self.cert_issuer)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("could not make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a validity time out of range")]
    Time,
}

/// What to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing until `at` (Unix seconds).
    Keep { at: i64 },
    /// Nothing stored, or unreadable: a CA and a leaf.
    Fresh,
    /// The CA is at two thirds of its life: a new one joins the bundle.
    NewCa,
    /// A new leaf from the current CA (its CA is published).
    NewLeaf,
    /// A new leaf is due, but the current CA is not in the published caBundle yet.
    Publish,
}

/// Two thirds of the way from `nb` to `na`: when a certificate is renewed.
pub fn renew_at(nb: i64, na: i64) -> i64 {
    nb + (na - nb) * 2 / 3
}

/// The step for `stored` at `now`, given the `dns_names` the leaf must carry and whether
/// the caBundle the API server uses holds the current CA.
pub fn next_step(now: i64, stored: Option<&Bundle>, dns_names: &[String], published: bool) -> Step {
    let Some(b) = stored else {
        return Step::Fresh;
    };
    if now >= b.ca_not_after || b.cas.is_empty() {
        return Step::Fresh;
    }
    let ca_due = renew_at(b.ca_not_before, b.ca_not_after);
    if now >= ca_due {
        return Step::NewCa;
    }
    let leaf_due = renew_at(b.cert_not_before, b.cert_not_after);
    let needs_leaf =
        now >= leaf_due || b.cert_issuer != b.ca_not_before || b.dns_names != dns_names;
    match (needs_leaf, published) {
        (true, true) => Step::NewLeaf,
        (true, false) => Step::Publish,
        (false, _) => Step::Keep {
            at: leaf_due.min(ca_due),
        },
    }
}

fn datetime(unix: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|_| CertError::Time)
}

/// The CA's parameters, a function of its `not_before` alone, so that a stored CA can sign
/// again without parsing its certificate.
fn ca_params(not_before: i64, not_after: i64) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(
        DnType::CommonName,
        format!("cognito-unauth-controller webhook CA {not_before}"),
    );
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = datetime(not_before)?;
    p.not_after = datetime(not_after)?;
    Ok(p)
}

fn new_ca(now: i64, life: &Lifetimes) -> Result<(String, String, i64, i64), CertError> {
    let key = KeyPair::generate()?;
    let (nb, na) = (now - BACKDATE, now + life.ca_seconds);
    let cert = ca_params(nb, na)?.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem(), nb, na))
}

/// A leaf for `dns_names` from the bundle's current CA; it never outlives that CA.
fn new_leaf(
    now: i64,
    life: &Lifetimes,
    b: &mut Bundle,
    dns_names: &[String],
) -> Result<(), CertError> {
    let ca_key = KeyPair::from_pem(&b.ca_key)?;
    let issuer = Issuer::new(ca_params(b.ca_not_before, b.ca_not_after)?, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(dns_names.to_vec())?;
    p.distinguished_name.push(
        DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let (nb, na) = (
        now - BACKDATE,
        (now + life.leaf_seconds).min(b.ca_not_after),
    );
    p.not_before = datetime(nb)?;
    p.not_after = datetime(na)?;
    b.cert = p.signed_by(&key, &issuer)?.pem();
    b.key = key.serialize_pem();
    b.cert_not_before = nb;
    b.cert_not_after = na;
    b.cert_issuer = b.ca_not_before;
    b.dns_names = dns_names.to_vec();
    Ok(())
}

/// The bundle after `step` (`Keep` and `Publish` change nothing).
pub fn apply(
    step: Step,
    now: i64,
    stored: Option<&Bundle>,
    life: &Lifetimes,
    dns_names: &[String],
) -> Result<Option<Bundle>, CertError> {
    match (step, stored) {
        (Step::Fresh, _) | (Step::NewCa | Step::NewLeaf, None) => {
            let (ca, ca_key, nb, na) = new_ca(now, life)?;
            let mut b = Bundle {
                cas: vec![ca],
                ca_key,
                ca_not_before: nb,
                ca_not_after: na,
                cert: String::new(),
                key: String::new(),
                cert_not_before: 0,
                cert_not_after: 0,
                cert_issuer: 0,
                dns_names: Vec::new(),
            };
            new_leaf(now, life, &mut b, dns_names)?;
            Ok(Some(b))
        }
        (Step::NewCa, Some(old)) => {
            let (ca, ca_key, nb, na) = new_ca(now, life)?;
            let mut b = old.clone();
            // The old CA stays trusted while the leaf it signed is served.
            b.cas = std::iter::once(ca)
                .chain(old.cas.first().cloned())
                .collect();
            b.ca_key = ca_key;
            b.ca_not_before = nb;
            b.ca_not_after = na;
            Ok(Some(b))
        }
        (Step::NewLeaf, Some(old)) => {
            let mut b = old.clone();
            new_leaf(now, life, &mut b, dns_names)?;
            // The CA before the current one goes once the leaf being replaced is the
            // current CA's: by then no replica still serves a leaf the older one signed.
            if old.cert_issuer == old.ca_not_before {
                b.cas.truncate(1);
            }
            Ok(Some(b))
        }
        (Step::Keep { .. } | Step::Publish, _) => Ok(None),
    }
}

impl Bundle {
    /// The caBundle: every trusted CA, concatenated.
    pub fn ca_bundle(&self) -> String {
        self.cas.concat()
    }

    /// Reads a Secret written by [`Bundle::to_secret_data`]; `None` when anything is
    /// missing or unreadable (it is then made afresh).
    pub fn from_secret(
        data: &BTreeMap<String, ByteString>,
        annotations: &BTreeMap<String, String>,
    ) -> Option<Self> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let num = |k: &str| annotations.get(k).and_then(|v| v.parse::<i64>().ok());
        let bundle = text(KEY_CA)?;
        let cas = split_pem(&bundle);
        Some(Self {
            cas,
            ca_key: text(KEY_CA_KEY)?,
            ca_not_before: num(ANN_CA_NOT_BEFORE)?,
            ca_not_after: num(ANN_CA_NOT_AFTER)?,
            cert: text(KEY_CERT)?,
            key: text(KEY_KEY)?,
            cert_not_before: num(ANN_CERT_NOT_BEFORE)?,
            cert_not_after: num(ANN_CERT_NOT_AFTER)?,
            cert_issuer: num(ANN_CERT_ISSUER)?,
            dns_names: annotations
                .get(ANN_DNS_NAMES)?
                .split(',')
                .map(str::to_string)
                .collect(),
        })
    }

    /// The Secret's data and annotations.
    pub fn to_secret_data(&self) -> (BTreeMap<String, ByteString>, BTreeMap<String, String>) {
        let data = [
            (KEY_CA, self.ca_bundle()),
            (KEY_CA_KEY, self.ca_key.clone()),
            (KEY_CERT, self.cert.clone()),
            (KEY_KEY, self.key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
        let annotations = [
            (ANN_CA_NOT_BEFORE, self.ca_not_before.to_string()),
            (ANN_CA_NOT_AFTER, self.ca_not_after.to_string()),
            (ANN_CERT_NOT_BEFORE, self.cert_not_before.to_string()),
            (ANN_CERT_NOT_AFTER, self.cert_not_after.to_string()),
            (ANN_CERT_ISSUER, self.cert_issuer.to_string()),
            (ANN_DNS_NAMES, self.dns_names.join(",")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        (data, annotations)
    }
}

/// The certificates in a PEM bundle, each with its END line.
pub fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim_start)
        .filter(|c| c.ends_with(END))
        .map(|c| format!("{c}\n"))
        .collect()
}

/// The DNS names a webhook Service is reached by.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetimes = Lifetimes {
        ca_seconds: 3000,
        leaf_seconds: 300,
    };

    fn names() -> Vec<String> {
        service_dns_names("wh", "ns")
    }

    fn made(now: i64) -> Bundle {
        apply(Step::Fresh, now, None, &LIFE, &names())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_fresh_bundle_round_trips_through_the_secret() {
        let b = made(1_000_000);
        assert_eq!(b.cas.len(), 1);
        assert_eq!(b.ca_not_before, 1_000_000 - 60);
        assert_eq!(b.cert_not_after, 1_000_300);
        assert_eq!(b.cert_issuer, b.ca_not_before);
        let (data, ann) = b.to_secret_data();
        assert_eq!(Bundle::from_secret(&data, &ann), Some(b.clone()));
        let mut broken = data.clone();
        broken.remove(KEY_KEY);
        assert_eq!(Bundle::from_secret(&broken, &ann), None);
        assert!(!format!("{b:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn the_leaf_is_renewed_at_two_thirds_and_the_ca_in_two_steps() {
        let t0 = 1_000_000;
        let b = made(t0);
        let leaf_due = renew_at(t0 - 60, t0 + 300);
        assert_eq!(
            next_step(t0, Some(&b), &names(), true),
            Step::Keep { at: leaf_due }
        );
        assert_eq!(next_step(leaf_due, Some(&b), &names(), true), Step::NewLeaf);
        let b2 = apply(Step::NewLeaf, leaf_due, Some(&b), &LIFE, &names())
            .unwrap()
            .unwrap();
        assert_ne!(b2.cert, b.cert);
        assert_eq!(
            (b2.cas.clone(), b2.ca_key.clone()),
            (b.cas.clone(), b.ca_key.clone())
        );

        // The CA at two thirds: it joins the bundle, the leaf stays until it is published.
        let ca_due = renew_at(b.ca_not_before, b.ca_not_after);
        assert_eq!(next_step(ca_due, Some(&b2), &names(), true), Step::NewCa);
        let b3 = apply(Step::NewCa, ca_due, Some(&b2), &LIFE, &names())
            .unwrap()
            .unwrap();
        assert_eq!(b3.cas.len(), 2);
        assert_eq!(b3.cas[1], b.cas[0]);
        assert_eq!(b3.cert, b2.cert);
        assert_eq!(next_step(ca_due, Some(&b3), &names(), false), Step::Publish);
        assert_eq!(next_step(ca_due, Some(&b3), &names(), true), Step::NewLeaf);
        let b4 = apply(Step::NewLeaf, ca_due, Some(&b3), &LIFE, &names())
            .unwrap()
            .unwrap();
        assert_eq!(b4.cert_issuer, b3.ca_not_before);
        assert!(b4.cert_not_after <= b4.ca_not_after);
        // The old CA stays in the bundle while a replica may still serve its leaf; the
        // next leaf (replacing one the new CA signed) drops it.
        assert_eq!(b4.cas, b3.cas);
        let b5 = apply(Step::NewLeaf, ca_due + 1, Some(&b4), &LIFE, &names())
            .unwrap()
            .unwrap();
        assert_eq!(b5.cas, vec![b3.cas[0].clone()]);
    }

    #[test]
    fn new_names_or_an_expired_ca_start_over() {
        let b = made(1_000_000);
        let other = service_dns_names("other", "ns");
        assert_eq!(next_step(1_000_001, Some(&b), &other, true), Step::NewLeaf);
        assert_eq!(
            next_step(b.ca_not_after, Some(&b), &names(), true),
            Step::Fresh
        );
        assert_eq!(next_step(0, None, &names(), true), Step::Fresh);
    }

    #[test]
    fn the_leaf_verifies_against_the_bundle() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
        let b = made(jiff::Timestamp::now().as_second());
        let mut roots = rustls::RootCertStore::empty();
        for ca in &b.cas {
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(b.cert.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("wh.ns.svc").unwrap(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &leaf,
                    &[],
                    &ServerName::try_from("elsewhere.ns.svc").unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .is_err()
        );
    }
}
