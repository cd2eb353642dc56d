//! Certificates minted at run time for the tests' TLS servers: a throwaway CA
//! and a leaf for one name, signed with rcgen (ring).

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Returns the CA as PEM (for the client's trust store), the server chain (leaf,
/// CA) and the leaf's private key.
pub fn mint_certificates(
    name: &str,
) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    mint_certificates_for(&[name])
}

/// As [`mint_certificates`], with a leaf that names every one of `names` (an IP address
/// becomes an IP SAN, as in public DoH resolvers' certificates).
pub fn mint_certificates_for(
    names: &[&str],
) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let name = names[0];
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = CertificateParams::new(sans).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, name);
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (
        ca_cert.pem(),
        vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key,
    )
}

/// A TLS acceptor for `name` (ring provider, safe defaults) and the PEM of the CA
/// that signed it, written to `dir/file` for the client's trust store.
pub fn tls_acceptor(
    name: &str,
    dir: &std::path::Path,
    file: &str,
) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let (ca_pem, chain, key) = mint_certificates(name);
    let ca_file = dir.join(file);
    std::fs::write(&ca_file, ca_pem).unwrap();
    (acceptor(chain, key), ca_file)
}

/// A TLS acceptor serving `chain` (leaf first) with `key`, on ring: the test servers' one
/// way to build one.
pub fn acceptor(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}
