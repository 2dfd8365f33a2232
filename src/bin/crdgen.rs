//! Prints the CustomResourceDefinition generated from the Rust types (`make crds`).

use cognito_unauth_controller::crd::CognitoUnauthCredential;
use kube::CustomResourceExt;

fn main() -> anyhow::Result<()> {
    print!(
        "{}",
        serde_yaml::to_string(&CognitoUnauthCredential::crd())?
    );
    Ok(())
}
