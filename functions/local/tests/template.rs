//! template.yaml against the code: every function's CodeUri is a crate in
//! functions/ whose binary is the one SAM builds, and every route the HTTP
//! crate serves reaches the function that serves it (and nothing else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn template() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap()).unwrap()
}

fn functions(template: &Value) -> Vec<(String, Value)> {
    template["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(name, r)| (name.as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

#[test]
fn every_function_builds_a_binary_of_a_crate_in_functions() {
    let template = template();
    let functions = functions(&template);
    assert_eq!(functions.len(), 5);
    for (name, resource) in functions {
        let code_uri = resource["Properties"]["CodeUri"].as_str().unwrap();
        assert!(
            code_uri.starts_with("functions/"),
            "{name}: CodeUri {code_uri}"
        );
        let manifest = std::fs::read_to_string(root().join(code_uri).join("Cargo.toml"))
            .unwrap_or_else(|_| panic!("{name}: {code_uri} is not a crate"));
        assert_eq!(
            resource["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{name}"
        );
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap();
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{name}: {code_uri}/Cargo.toml has no binary '{binary}'"
        );
    }
}

/// Whether an API Gateway route (method, path) matches a request path.
fn gateway_matches(method: &str, path: &str, want_method: &str, want_path: &str) -> bool {
    if method != "ANY" && method != want_method {
        return false;
    }
    let (route, want) = (
        path.split('/').collect::<Vec<_>>(),
        want_path.split('/').collect::<Vec<_>>(),
    );
    for (i, segment) in route.iter().enumerate() {
        if segment.ends_with("+}") {
            return want.len() > i;
        }
        match want.get(i) {
            Some(w) if segment == w || (segment.starts_with('{') && w.starts_with('{')) => {}
            _ => return false,
        }
    }
    route.len() == want.len()
}

#[test]
fn every_http_route_is_served_by_its_function() {
    let template = template();
    let functions = functions(&template);
    let mut gateway_routes = Vec::new();
    for (name, resource) in &functions {
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for event in events.values().filter(|e| e["Type"] == "HttpApi") {
            let props = &event["Properties"];
            gateway_routes.push((
                name.clone(),
                props["Method"].as_str().unwrap().to_owned(),
                props["Path"].as_str().unwrap().to_owned(),
            ));
        }
    }
    for (function, method, path) in crmbridge_api::ROUTES {
        let resource = format!("{}Function", capitalise(function));
        let routed: Vec<_> = gateway_routes
            .iter()
            .filter(|(_, m, p)| gateway_matches(m, p, method, path))
            .map(|(name, _, _)| name.clone())
            .collect();
        assert_eq!(
            routed,
            vec![resource.clone()],
            "{method} {path} must reach {resource} only"
        );
    }
    // And no gateway route leads to a function that serves nothing there.
    for (name, method, path) in &gateway_routes {
        assert!(
            crmbridge_api::ROUTES.iter().any(|(function, m, p)| {
                format!("{}Function", capitalise(function)) == *name
                    && gateway_matches(method, path, m, p)
            }),
            "{name} has route {method} {path} that its router does not serve"
        );
    }
}

#[test]
fn the_encryption_key_parameter_is_never_echoed() {
    let template = template();
    assert_eq!(template["Parameters"]["EncryptionKeys"]["NoEcho"], true);
    assert_eq!(template["Parameters"]["Architecture"]["Default"], "x86_64");
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().collect::<String>() + chars.as_str())
        .unwrap_or_default()
}
