//! Changing a user's role or status: the one path `payg user role|status`
//! and `PATCH /api/v1/admin/users/{id}` share, so both have the same effects.
//!
//! The change is one transaction; once it has committed, every running
//! instance is told (the `UserChanged` event), so the user's next call
//! anywhere is answered with the new role or status. Suspension ends
//! nothing else: the user's access tokens and API keys are refused (403
//! `account_suspended`) and refresh tokens cannot be rotated while the
//! account is suspended; reactivating it lets the same sessions and keys
//! work again.

use std::future::Future;

use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::models::user::StandingChange;
use crate::models::{Role, User, UserStatus};

/// Why a role or status change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("nothing to change: give a role or a status")]
    NothingToChange,
    #[error("no such user")]
    NotFound,
    /// An admin demoting or suspending their own account: refused, so that
    /// no admin can lock themselves (and perhaps everyone) out by mistake.
    #[error("admins cannot demote or suspend their own account; another admin (or `payg user`) can")]
    OwnAccount,
    /// The acting user is no longer an active admin (changed since their
    /// request was authenticated).
    #[error("this route requires the admin role")]
    NotAnAdmin,
    #[error(transparent)]
    Database(#[from] DieselError),
}

/// Tells the running instances that a user's role, status or dues changed:
/// a serving instance's [`Authenticator`] (here at once, the others by
/// push), or the CLI, which serves nothing and only publishes the event.
pub trait Announce {
    fn announce(&self, user_id: Uuid) -> impl Future<Output = ()>;
}

/// A serving instance: applied here at once, and published to the others.
impl Announce for Authenticator {
    fn announce(&self, user_id: Uuid) -> impl Future<Output = ()> {
        self.user_changed(user_id)
    }
}

/// Changes `user_id`'s role and/or status and announces it. `by_admin` is
/// the admin making the change over HTTP (`None`: an operator at the CLI):
/// they must still be an active admin when the change is made, and may not
/// demote or suspend themselves. Both rows are locked for the check, so two
/// admins demoting each other at once cannot both succeed and leave no
/// admin. Returns the updated user.
pub async fn change_standing(
    conn: &mut AsyncPgConnection,
    announcer: &impl Announce,
    user_id: Uuid,
    change: StandingChange,
    by_admin: Option<Uuid>,
) -> Result<User, ChangeError> {
    if change.is_empty() {
        return Err(ChangeError::NothingToChange);
    }
    let user = conn
        .transaction::<_, ChangeError, _>(async |conn| {
            let ids: Vec<Uuid> = [Some(user_id), by_admin].into_iter().flatten().collect();
            let locked = User::lock_standings(conn, &ids).await?;
            let standing_of = |id: Uuid| locked.iter().find(|(found, _)| *found == id).map(|(_, s)| *s);
            if let Some(admin) = by_admin {
                let still_admin =
                    standing_of(admin).is_some_and(|s| s.role == Role::Admin && s.status == UserStatus::Active);
                if !still_admin {
                    return Err(ChangeError::NotAnAdmin);
                }
                if admin == user_id && demotes_or_suspends(change) {
                    return Err(ChangeError::OwnAccount);
                }
            }
            if standing_of(user_id).is_none() {
                return Err(ChangeError::NotFound);
            }
            Ok(User::set_standing(conn, user_id, &change).await?)
        })
        .await?;
    // After the commit: an instance that re-reads the user on hearing it
    // must find the new standing.
    announcer.announce(user.id).await;
    Ok(user)
}

/// Whether `change`, made to an active admin, leaves them less than that.
fn demotes_or_suspends(change: StandingChange) -> bool {
    change.role.is_some_and(|r| r != Role::Admin) || change.status == Some(UserStatus::Suspended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_that_leaves_an_admin_less_than_an_active_admin_is_a_demotion() {
        let change = |role, status| StandingChange { role, status };
        assert!(demotes_or_suspends(change(Some(Role::Consumer), None)));
        assert!(demotes_or_suspends(change(Some(Role::Finance), None)));
        assert!(demotes_or_suspends(change(None, Some(UserStatus::Suspended))));
        assert!(demotes_or_suspends(change(
            Some(Role::Admin),
            Some(UserStatus::Suspended)
        )));
        assert!(!demotes_or_suspends(change(Some(Role::Admin), None)));
        assert!(!demotes_or_suspends(change(None, Some(UserStatus::Active))));
        assert!(!demotes_or_suspends(change(
            Some(Role::Admin),
            Some(UserStatus::Active)
        )));
    }
}
