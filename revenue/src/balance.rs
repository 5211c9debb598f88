//! The energy balance of a group of meters (a feeder, a transformer, a district) per local
//! day: what its head meter(s) measured entering it, against the sum of what its customer
//! meters used (each by [`crate::energy`]), the difference as loss in kWh and % of the head.
//! A meter whose day is not known is counted as missing, not as zero: the loss of such a
//! day is printed, and marked not complete, so that a missing read is not taken for theft.

use std::collections::BTreeMap;

use chrono::NaiveDate;

/// What a meter is to its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Measures what enters the group (a feeder or transformer head meter).
    Head,
    /// A customer of the group.
    Customer,
    /// A customer of the group that no head meter measures (a district's customer on a
    /// feeder without a head): counted apart, left out of the loss.
    Unmetered,
}

/// One meter's energy on one day, in the group it belonged to that day.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub group: &'a str,
    pub day: NaiveDate,
    pub side: Side,
    /// kWh; `None`: not known that day.
    pub kwh: Option<f64>,
}

/// One group on one day.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceRow {
    pub group: String,
    pub day: NaiveDate,
    /// The head meters' energy (`None`: the group has no head, or one is not known).
    pub head_kwh: Option<f64>,
    pub heads: usize,
    pub heads_missing: usize,
    /// The customers' energy, of those known.
    pub customers_kwh: f64,
    pub customers: usize,
    pub customers_missing: usize,
    /// Customers no head meter measures (left out of the loss).
    pub customers_unmetered: usize,
    /// Head minus customers, kWh, and as % of the head (when the head is above 0).
    pub loss_kwh: Option<f64>,
    pub loss_pct: Option<f64>,
}

impl BalanceRow {
    /// Every meter of the group was known that day.
    pub fn is_complete(&self) -> bool {
        self.heads > 0 && self.heads_missing == 0 && self.customers_missing == 0
    }
}

/// The balance of every group and day the entries name, ordered by group and day.
pub fn balance<'a>(entries: impl IntoIterator<Item = Entry<'a>>) -> Vec<BalanceRow> {
    let mut rows: BTreeMap<(&str, NaiveDate), BalanceRow> = BTreeMap::new();
    for e in entries {
        let row = rows.entry((e.group, e.day)).or_insert_with(|| BalanceRow {
            group: e.group.to_string(),
            day: e.day,
            head_kwh: Some(0.0),
            heads: 0,
            heads_missing: 0,
            customers_kwh: 0.0,
            customers: 0,
            customers_missing: 0,
            customers_unmetered: 0,
            loss_kwh: None,
            loss_pct: None,
        });
        match (e.side, e.kwh) {
            (Side::Head, Some(kwh)) => {
                row.heads += 1;
                row.head_kwh = row.head_kwh.map(|h| h + kwh);
            }
            (Side::Head, None) => {
                row.heads += 1;
                row.heads_missing += 1;
                row.head_kwh = None;
            }
            (Side::Customer, Some(kwh)) => {
                row.customers += 1;
                row.customers_kwh += kwh;
            }
            (Side::Customer, None) => {
                row.customers += 1;
                row.customers_missing += 1;
            }
            (Side::Unmetered, _) => row.customers_unmetered += 1,
        }
    }
    rows.into_values()
        .map(|mut row| {
            if row.heads == 0 {
                row.head_kwh = None;
            }
            if let Some(head) = row.head_kwh {
                let loss = head - row.customers_kwh;
                row.loss_kwh = Some(loss);
                row.loss_pct = (head > 0.0).then(|| 100.0 * loss / head);
            }
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 6, d).unwrap()
    }

    #[test]
    fn loss_is_head_minus_customers_and_missing_meters_are_counted_not_zero() {
        let e = |group, d, side, kwh| Entry {
            group,
            day: day(d),
            side,
            kwh,
        };
        let rows = balance([
            e("F1", 1, Side::Head, Some(100.0)),
            e("F1", 1, Side::Customer, Some(40.0)),
            e("F1", 1, Side::Customer, Some(45.0)),
            e("F1", 2, Side::Head, Some(90.0)),
            e("F1", 2, Side::Customer, Some(40.0)),
            e("F1", 2, Side::Customer, None),
            e("F2", 1, Side::Customer, Some(5.0)),
            e("F3", 1, Side::Head, None),
            e("F3", 1, Side::Customer, Some(5.0)),
            e("F1", 1, Side::Unmetered, Some(70.0)),
        ]);
        assert_eq!(rows.len(), 4);
        let f1 = &rows[0];
        assert_eq!(
            f1.loss_kwh,
            Some(15.0),
            "an unmetered customer is not counted"
        );
        assert_eq!(f1.customers_unmetered, 1);
        assert_eq!(f1.loss_pct, Some(15.0));
        assert!(f1.is_complete());
        let f1_2 = &rows[1];
        assert_eq!((f1_2.customers, f1_2.customers_missing), (2, 1));
        assert_eq!(f1_2.loss_kwh, Some(50.0));
        assert!(!f1_2.is_complete());
        // No head: no loss.
        assert_eq!((rows[2].head_kwh, rows[2].loss_kwh), (None, None));
        assert!(!rows[2].is_complete());
        // A head not known: no loss either.
        assert_eq!((rows[3].heads_missing, rows[3].loss_kwh), (1, None));
    }
}
