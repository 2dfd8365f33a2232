fn main() {
    println!("cognito-unauth-controller {}", env!("CARGO_PKG_VERSION"));
}
