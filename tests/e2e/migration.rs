//! Migration: Istio and App Mesh resources imported (`proxyless_core::import`,
//! what `meshctl import` runs), the config they make served, and real
//! requests routed as the resources said, over loopback.

use crate::support::echo;
use proxyless_core::Mesh;
use proxyless_core::import::{Options, import};
use proxyless_hyper::Client;

async fn backend_of(client: &Client, url: &str, header: Option<(&str, &str)>) -> (u16, String) {
    let mut req = http::Request::get(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let resp = client
        .request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (resp.status().as_u16(), backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_resources_imported_route_real_requests() {
    let (v1, v2) = (echo("mig-v1").await, echo("mig-v2").await);
    let (p1, p2) = (v1.addr().port(), v2.addr().port());
    let istio = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: v1, namespace: shop }}
spec:
  hosts: [reviews-v1.internal]
  ports: [{{ number: {p1}, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1 }}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{ name: v2, namespace: shop }}
spec:
  hosts: [reviews-v2.internal]
  ports: [{{ number: {p2}, name: http, protocol: HTTP }}]
  resolution: STATIC
  endpoints: [{{ address: 127.0.0.1 }}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: reviews, namespace: shop }}
spec:
  hosts: [reviews.internal]
  http:
    - match: [{{ headers: {{ end-user: {{ exact: jason }} }} }}]
      route: [{{ destination: {{ host: reviews-v2.internal }} }}]
    - match: [{{ uri: {{ prefix: /broken }} }}]
      fault: {{ abort: {{ httpStatus: 418, percentage: {{ value: 100 }} }} }}
      route: [{{ destination: {{ host: reviews-v1.internal }} }}]
    - route:
        - {{ destination: {{ host: reviews-v1.internal }}, weight: 50 }}
        - {{ destination: {{ host: reviews-v2.internal }}, weight: 50 }}
"#
    );
    let out = import(&[("istio.yaml", &istio)], &Options::default()).unwrap();
    assert!(!out.lossy(), "{:#?}", out.losses);
    let client = Client::new(&Mesh::from_config(out.config).unwrap());
    let url = "http://reviews.internal/reviews/1";
    for _ in 0..10 {
        let got = backend_of(&client, url, Some(("end-user", "jason"))).await;
        assert_eq!(got, (200, "mig-v2".to_owned()), "the header route");
    }
    let (status, _) = backend_of(&client, "http://reviews.internal/broken", None).await;
    assert_eq!(status, 418, "the injected abort");
    let mut by = std::collections::HashMap::new();
    for _ in 0..400 {
        let (status, b) = backend_of(&client, url, None).await;
        assert_eq!(status, 200);
        *by.entry(b).or_insert(0u32) += 1;
    }
    // 50/50: each far from zero and from all (binomial, 400 draws).
    assert!(by["mig-v1"] > 120 && by["mig-v2"] > 120, "{by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mesh_resources_imported_route_real_requests() {
    let (v1, v2) = (echo("am-v1").await, echo("am-v2").await);
    let (p1, p2) = (v1.addr().port(), v2.addr().port());
    let node = |name: &str, port: u16| {
        format!(
            r#"{{"virtualNode": {{"meshName": "apps", "virtualNodeName": "{name}", "spec": {{"listeners": [{{"portMapping": {{"port": {port}, "protocol": "http"}}}}], "serviceDiscovery": {{"dns": {{"hostname": "127.0.0.1"}}}}}}}}}}"#
        )
    };
    let (n1, n2) = (node("ratings-v1", p1), node("ratings-v2", p2));
    let route = r#"{"route": {"meshName": "apps", "routeName": "testers", "virtualRouterName": "ratings", "spec": {"priority": 1, "httpRoute": {"match": {"prefix": "/", "headers": [{"name": "x-tester", "match": {"exact": "yes"}}]}, "action": {"weightedTargets": [{"virtualNode": "ratings-v2", "weight": 1}]}}}}}"#;
    let rest = r#"{"route": {"meshName": "apps", "routeName": "rest", "virtualRouterName": "ratings", "spec": {"priority": 2, "httpRoute": {"match": {"prefix": "/"}, "action": {"weightedTargets": [{"virtualNode": "ratings-v1", "weight": 1}]}}}}}"#;
    let service = r#"{"virtualService": {"meshName": "apps", "virtualServiceName": "ratings.apps.local", "spec": {"provider": {"virtualRouter": {"virtualRouterName": "ratings"}}}}}"#;
    let inputs = [
        ("n1.json", n1.as_str()),
        ("n2.json", n2.as_str()),
        ("route.json", route),
        ("rest.json", rest),
        ("service.json", service),
    ];
    let out = import(&inputs, &Options::default()).unwrap();
    assert!(!out.lossy(), "{:#?}", out.losses);
    let client = Client::new(&Mesh::from_config(out.config).unwrap());
    let url = "http://ratings.apps.local/ratings/1";
    for _ in 0..5 {
        assert_eq!(
            backend_of(&client, url, Some(("x-tester", "yes"))).await,
            (200, "am-v2".into())
        );
        assert_eq!(backend_of(&client, url, None).await, (200, "am-v1".into()));
    }
}
