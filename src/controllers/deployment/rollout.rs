//! Rollout arithmetic of the Deployment controller (pure), following kube's
//! `deployment/util`: surge and unavailability from percentages (maxSurge rounds up,
//! maxUnavailable rounds down, both zero means one unavailable), how far the new ReplicaSet may
//! grow, how far the old ones may shrink, proportional scaling, and the status.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What the arithmetic needs to know about one ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rs {
    pub name: String,
    /// Creation time (seconds since the epoch) for ordering; ties by name.
    pub created: i64,
    /// `spec.replicas`.
    pub replicas: i32,
    pub status_replicas: i32,
    pub ready: i32,
    pub available: i32,
    /// The `deployment.kubernetes.io/max-replicas` annotation, if set.
    pub max_replicas: Option<i32>,
}

/// `GetScaledValueFromIntOrPercent`: an integer, or a percentage of `total` rounded up or down.
pub fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let Some(p) = s
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<i64>().ok())
            else {
                return s.parse().unwrap_or(0);
            };
            let product = p * i64::from(total);
            let v = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            v as i32
        }
    }
}

/// `ResolveFenceposts`: (maxSurge, maxUnavailable) for `desired` replicas.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let surge = scaled_value(max_surge, desired, true);
    let mut unavailable = scaled_value(max_unavailable, desired, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// `NewRSNewReplicas` for a rolling update: the new ReplicaSet's size, growing into the surge
/// room left by all ReplicaSets together.
pub fn new_rs_replicas(desired: i32, surge: i32, all_replicas: i32, new_replicas: i32) -> i32 {
    let max_total = desired + surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    let up = (max_total - all_replicas).min(desired - new_replicas);
    new_replicas + up.max(0)
}

/// How many old pods may go now without the Deployment dropping below `desired - unavailable`
/// available pods, counting the new ReplicaSet's pods that are not available yet
/// (`reconcileOldReplicaSets`' `maxScaledDown`).
pub fn max_scaled_down(
    desired: i32,
    unavailable: i32,
    all_replicas: i32,
    new_rs: Option<&Rs>,
) -> i32 {
    let min_available = desired - unavailable;
    let new_unavailable = new_rs.map_or(0, |r| r.replicas - r.available);
    all_replicas - min_available - new_unavailable
}

fn by_creation(rss: &mut [Rs]) {
    rss.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
}

/// `cleanupUnhealthyReplicas`: shrink old ReplicaSets by their unavailable pods first (oldest
/// first), at most `max_cleanup` in total. Returns the new sizes (name, replicas) and the count.
pub fn cleanup_unhealthy(old: &[Rs], max_cleanup: i32) -> (Vec<(String, i32)>, i32) {
    let mut old = old.to_vec();
    by_creation(&mut old);
    let mut total = 0;
    let mut out = Vec::new();
    for rs in old {
        if total >= max_cleanup {
            break;
        }
        if rs.replicas == 0 || rs.replicas == rs.available {
            continue;
        }
        let down = (max_cleanup - total).min(rs.replicas - rs.available);
        total += down;
        out.push((rs.name.clone(), rs.replicas - down));
    }
    (out, total)
}

/// `scaleDownOldReplicaSetsForRollingUpdate`: shrink old ReplicaSets (oldest first) as long as
/// the available pods stay at or above `desired - unavailable`.
pub fn scale_down_old(
    all: &[Rs],
    old: &[Rs],
    desired: i32,
    unavailable: i32,
) -> Vec<(String, i32)> {
    let min_available = desired - unavailable;
    let available: i32 = all.iter().map(|r| r.available).sum();
    if available <= min_available {
        return Vec::new();
    }
    let total = available - min_available;
    let mut old = old.to_vec();
    by_creation(&mut old);
    let mut done = 0;
    let mut out = Vec::new();
    for rs in old {
        if done >= total {
            break;
        }
        if rs.replicas == 0 {
            continue;
        }
        let down = rs.replicas.min(total - done);
        done += down;
        out.push((rs.name.clone(), rs.replicas - down));
    }
    out
}

/// Proportional scaling (`scale`) of the active ReplicaSets when the Deployment is resized in
/// the middle of a rollout: each gets its share of the change by its size relative to the
/// `max-replicas` it was sized for; the rounding leftover goes to the largest (newest on growth,
/// oldest on shrink).
pub fn proportional(
    active: &[Rs],
    desired: i32,
    surge: i32,
    status_replicas: i32,
) -> Vec<(String, i32)> {
    let allowed = if desired > 0 { desired + surge } else { 0 };
    let current: i32 = active.iter().map(|r| r.replicas).sum();
    let to_add = allowed - current;
    if to_add == 0 {
        return Vec::new();
    }
    let mut sorted = active.to_vec();
    if to_add > 0 {
        // Larger first, newer first on ties.
        sorted.sort_by(|a, b| {
            b.replicas
                .cmp(&a.replicas)
                .then((b.created, &b.name).cmp(&(a.created, &a.name)))
        });
    } else {
        sorted.sort_by(|a, b| {
            b.replicas
                .cmp(&a.replicas)
                .then((a.created, &a.name).cmp(&(b.created, &b.name)))
        });
    }
    let mut added = 0;
    let mut sizes: Vec<(String, i32)> = Vec::new();
    for rs in &sorted {
        let mut proportion = 0;
        if rs.replicas != 0 && to_add != added {
            let fraction = if desired == 0 {
                -rs.replicas
            } else {
                let annotated = rs.max_replicas.unwrap_or(status_replicas);
                if annotated == 0 {
                    0
                } else {
                    let size =
                        f64::from(rs.replicas) * f64::from(desired + surge) / f64::from(annotated);
                    size.round() as i32 - rs.replicas
                }
            };
            let left = to_add - added;
            proportion = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
        }
        added += proportion;
        sizes.push((rs.name.clone(), rs.replicas + proportion));
    }
    if let Some(first) = sizes.first_mut() {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

/// The counts of a Deployment status (`calculateStatus`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub unavailable: i32,
}

/// The status counts from the ReplicaSets (`new_rs` among `all`).
pub fn counts(all: &[Rs], new_rs: Option<&Rs>) -> Counts {
    let total: i32 = all.iter().map(|r| r.replicas).sum();
    let available: i32 = all.iter().map(|r| r.available).sum();
    Counts {
        replicas: all.iter().map(|r| r.status_replicas).sum(),
        updated: new_rs.map_or(0, |r| r.status_replicas),
        ready: all.iter().map(|r| r.ready).sum(),
        available,
        unavailable: (total - available).max(0),
    }
}

/// `DeploymentComplete`: every replica updated and available, no old ones left.
pub fn complete(desired: i32, c: &Counts) -> bool {
    c.updated == desired && c.replicas == desired && c.available == desired
}

/// `DeploymentProgressing`: the rollout moved since the last status.
pub fn progressing(old: &Counts, new: &Counts) -> bool {
    let old_old = old.replicas - old.updated;
    let new_old = new.replicas - new.updated;
    new.updated > old.updated
        || new_old < old_old
        || new.ready > old.ready
        || new.available > old.available
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    fn rs(name: &str, created: i64, replicas: i32, available: i32) -> Rs {
        Rs {
            name: name.into(),
            created,
            replicas,
            status_replicas: replicas,
            ready: available,
            available,
            max_replicas: None,
        }
    }

    #[test]
    fn fenceposts_round_like_kube() {
        assert_eq!(fenceposts(Some(&s("25%")), Some(&s("25%")), 2), (1, 0));
        assert_eq!(fenceposts(Some(&s("25%")), Some(&s("25%")), 10), (3, 2));
        assert_eq!(fenceposts(Some(&s("0%")), Some(&s("0%")), 10), (0, 1));
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(2)), Some(&s("50%")), 3),
            (2, 1)
        );
        assert_eq!(fenceposts(Some(&s("25%")), Some(&s("25%")), 1), (1, 0));
    }

    #[test]
    fn a_rolling_update_step_by_step() {
        // 4 replicas, 25%/25%: surge 1, unavailable 1.
        let (surge, unavailable) = fenceposts(Some(&s("25%")), Some(&s("25%")), 4);
        assert_eq!((surge, unavailable), (1, 1));
        let old = rs("web-old", 1, 4, 4);
        // Step 1: the new RS may grow to 1 (5 pods in total).
        assert_eq!(new_rs_replicas(4, surge, 4, 0), 1);
        let new = rs("web-new", 2, 1, 0);
        // Old may lose 1 now: 5 pods, 3 must stay available, the new one is not available yet.
        assert_eq!(max_scaled_down(4, unavailable, 5, Some(&new)), 1);
        let all = [old.clone(), new.clone()];
        assert_eq!(
            cleanup_unhealthy(std::slice::from_ref(&old), 1),
            (vec![], 0)
        );
        assert_eq!(
            scale_down_old(&all, &[old], 4, unavailable),
            vec![("web-old".into(), 3)]
        );
        // No more growth until something goes: 3 + 1 = 4 < 5 → grow to 2.
        assert_eq!(new_rs_replicas(4, surge, 4, 1), 2);
        // Unhealthy old pods go first.
        let sick = rs("web-old", 1, 3, 1);
        assert_eq!(
            cleanup_unhealthy(&[sick], 5),
            (vec![("web-old".into(), 1)], 2)
        );
    }

    #[test]
    fn proportional_scaling_and_status() {
        let mut a = rs("web-a", 1, 6, 6);
        a.max_replicas = Some(13);
        let mut b = rs("web-b", 2, 4, 0);
        b.max_replicas = Some(13);
        // 10 replicas with surge 3 became 20 with surge 5: 25 allowed, 10 exist.
        let sizes = proportional(&[a.clone(), b.clone()], 20, 5, 10);
        // a: round(6 * 25 / 13) - 6 = 6, b: round(4 * 25 / 13) - 4 = 4, the leftover 5 to a.
        assert_eq!(sizes, vec![("web-a".into(), 17), ("web-b".into(), 8)]);
        let c = counts(&[a.clone(), b.clone()], Some(&b));
        assert_eq!(
            c,
            Counts {
                replicas: 10,
                updated: 4,
                ready: 6,
                available: 6,
                unavailable: 4
            }
        );
        assert!(!complete(4, &c));
        let done = counts(&[rs("web-b", 2, 4, 4)], Some(&rs("web-b", 2, 4, 4)));
        assert!(complete(4, &done));
        assert!(progressing(&c, &done));
        assert!(!progressing(&done, &done));
    }
}
