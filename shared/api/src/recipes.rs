//! `/v1/recipes`: the shipped recipes and instantiating one.

use super::*;

/// This resource's routes.
pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/recipes", get(list_recipes))
        .route("/v1/recipes/{name}/instantiate", post(instantiate_recipe))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipeView {
    pub name: String,
    pub description: String,
    /// Role → the app a connection in that role must be.
    pub connections: std::collections::BTreeMap<String, String>,
    /// What the user chooses when instantiating, by name.
    pub parameters: std::collections::BTreeMap<String, crmbridge_control::recipes::RecipeParameter>,
    #[schema(value_type = Vec<Object>)]
    pub automations: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipeList {
    pub items: Vec<RecipeView>,
}

/// The recipes this version ships (recipes/*.yaml).
#[utoipa::path(
    get, path = "/v1/recipes", tag = "recipes", security(("api_key" = [])),
    responses((status = 200, body = RecipeList), (status = 401, body = ErrorBody))
)]
pub(crate) async fn list_recipes(
    State(state): State<HttpState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    principal(&state, &headers).await?;
    let mut items = Vec::new();
    for (name, _) in crmbridge_control::recipes::RECIPES {
        let recipe = crmbridge_control::recipes::recipe(name)?;
        items.push(RecipeView {
            name: recipe.name,
            description: recipe.description,
            connections: recipe.connections,
            parameters: recipe.parameters,
            automations: recipe
                .automations
                .iter()
                .map(|a| json!({"id": a["id"], "name": a["name"]}))
                .collect(),
        });
    }
    Ok(axum::Json(RecipeList { items }).into_response())
}

/// `POST /v1/recipes/{name}/instantiate`: which connection plays each role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstantiateRecipe {
    pub connections: std::collections::BTreeMap<String, String>,
    /// The recipe's parameters (see `parameters` in the recipe list).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: std::collections::BTreeMap<String, serde_json::Value>,
}

/// What instantiating a recipe made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InstantiatedRecipe {
    pub items: Vec<AutomationRecord>,
    /// The imports of existing records the recipe starts on activation.
    pub imports: Vec<crmbridge_engine::records::ImportRecord>,
}

/// Creates a recipe's automations with the given connections (all
/// validated before any is saved), and starts the imports of existing
/// records the recipe asks for (`import`).
#[utoipa::path(
    post, path = "/v1/recipes/{name}/instantiate", tag = "recipes", security(("api_key" = [])),
    params(("name" = String, Path)),
    request_body = InstantiateRecipe,
    responses(
        (status = 201, body = InstantiatedRecipe),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
    )
)]
pub(crate) async fn instantiate_recipe(
    State(state): State<HttpState>,
    Caller(who): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    who.require_role(Role::Admin, "change automations")?;
    let request: InstantiateRecipe = json_body(&headers, body, 64 * 1024).await?;
    let items = state
        .engine
        .instantiate_recipe(&who, &name, &request.connections, &request.parameters)
        .await?;
    // Activation imports what already exists (the roles were checked by
    // the instantiation). An import of the connection that is still
    // running, or failed and waits to be resumed, is answered instead: the
    // caller sees its state (and resumes it if it failed).
    let mut imports = Vec::new();
    for role in crmbridge_control::recipes::recipe(&name)?.import {
        let Some(connection) = request.connections.get(&role) else {
            continue;
        };
        match state.engine.start_import(&who.tenant, connection).await {
            Ok(job) => imports.push(job),
            Err(EngineError::Conflict { message, .. }) => {
                tracing::info!(connection, message, "import not started again");
                if let Some(job) = state
                    .engine
                    .connection_import(&who.tenant, connection)
                    .await?
                {
                    imports.push(job);
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(InstantiatedRecipe { items, imports }),
    )
        .into_response())
}
