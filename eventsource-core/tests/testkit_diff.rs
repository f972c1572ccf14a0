//! The list diff behind the test kit's failure messages.

use eventsource_core::testkit::{ListDiff, Listing};

#[derive(Debug, PartialEq)]
enum E {
    A,
    B { n: u32 },
    C,
}

#[test]
fn equal_lists_are_the_same() {
    let diff = ListDiff::new(&[E::A, E::C], &[E::A, E::C]);
    assert!(diff.is_same());
    assert_eq!(diff.first_difference(), None);
    assert_eq!(diff.to_string(), "  1  A\n  2  C\n");
    assert_eq!(ListDiff::new::<E>(&[], &[]).to_string(), "  (none)\n");
}

/// One extra value in the middle shows as one `+` block; the values after it keep both their
/// numbers.
#[test]
fn an_inserted_value_does_not_shift_the_rest_into_changes() {
    let diff = ListDiff::new(&[E::A, E::C], &[E::A, E::B { n: 1 }, E::C]);
    assert_eq!(diff.first_difference(), Some(2));
    assert_eq!((diff.expected_len(), diff.actual_len()), (2, 3));
    assert_eq!(
        diff.to_string(),
        "  1    A\n+ 2    B {\n+          n: 1,\n+      }\n  2/3  C\n"
    );
}

#[test]
fn a_changed_first_line_labels_both_versions() {
    let diff = ListDiff::new(&[E::A], &[E::C]);
    assert_eq!(diff.to_string(), "- 1  A\n+ 1  C\n");
}

#[test]
fn a_prefix_differs_one_past_its_end() {
    assert_eq!(
        ListDiff::new(&[E::A], &[E::A, E::C]).first_difference(),
        Some(2)
    );
    assert_eq!(
        ListDiff::new(&[E::A, E::C], &[E::A]).first_difference(),
        Some(2)
    );
    assert_eq!(ListDiff::new::<E>(&[], &[E::A]).first_difference(), Some(1));
}

#[test]
fn removed_values_come_before_added_ones() {
    let diff = ListDiff::new(&[E::A, E::B { n: 1 }], &[E::C]);
    assert_eq!(diff.first_difference(), Some(1));
    assert_eq!(
        diff.to_string(),
        "- 1  A\n+ 1  C\n- 2  B {\n-        n: 1,\n-    }\n"
    );
}

#[test]
fn a_listing_numbers_values() {
    assert_eq!(
        Listing::new(&[E::A, E::B { n: 2 }]).to_string(),
        "  1  A\n  2  B {\n         n: 2,\n     }\n"
    );
}
