//! Identity material as a source or a peer hands it over: a certificate's
//! validity period read from arbitrary DER, an SVID from arbitrary chain
//! and key bytes, a trust bundle from arbitrary certificates, and an SDS
//! `Secret` from arbitrary protobuf bytes. None of them panics; what loads
//! is consistent (an SVID's period contains now; bundles are never empty).
#![no_main]

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxyless_core::identity::tls::{Svid, TrustBundles};
use proxyless_core::identity::x509::validity;
use proxyless_core::xds::translate::{SecretMaterial, secret_material};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if let Some((start, end)) = validity(rest) {
        // Both times were read from digits: no arithmetic overflowed.
        assert!(start <= u64::MAX / 2 && end <= u64::MAX / 2);
    }
    match selector % 3 {
        0 => {
            let split = rest.len() / 2;
            let (cert, key) = rest.split_at(split);
            let chain = vec![CertificateDer::from(cert.to_vec())];
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
            if let Ok(svid) = Svid::from_der(chain, key) {
                assert!(svid.not_before() <= svid.not_after());
            }
        }
        1 => {
            let mut b = TrustBundles::new();
            let certs = vec![CertificateDer::from(rest.to_vec())];
            if b.insert_der("fuzz.test", certs.clone()).is_ok() {
                assert_eq!(b.len(), 1);
            }
            let _ = b.set_any_domain(certs);
            let _ = b.insert_pem("fuzz.test", rest);
        }
        _ => {
            if let Ok(secret) = Secret::decode(rest) {
                match secret_material(&secret) {
                    Ok(SecretMaterial::Bundles(b)) => assert!(!b.is_empty()),
                    Ok(SecretMaterial::Svid(s)) => assert!(!s.chain().is_empty()),
                    Err(_) => {}
                }
            }
        }
    }
});
