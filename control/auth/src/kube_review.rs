//! The real [`TokenReviewer`]: a TokenReview (`authentication.k8s.io/v1`) for audience
//! [`AUDIENCE`] against the API server. Needs RBAC `create` on `tokenreviews`, nothing else.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::Api;

use crate::review::{jwt_expiry, Identity, ReviewError, ReviewFuture, TokenReviewer};
use crate::AUDIENCE;

#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
    audience: String,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeTokenReviewer {
            client,
            audience: AUDIENCE.to_string(),
        }
    }

    async fn review_token(&self, token: &str) -> Result<Identity, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Rejected(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        // The API server answers with the requested audiences the token is valid for: a token for
        // another audience (the API server's own, say) is not authenticated for ours.
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return Err(ReviewError::Rejected(format!(
                "the token is not for audience {}",
                self.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        Identity::from_user(
            user.username.as_deref().unwrap_or_default(),
            &user.extra.unwrap_or_default(),
            jwt_expiry(token),
        )
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.review_token(token))
    }
}
