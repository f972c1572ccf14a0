//! Stream identity: the aggregate category plus the instance id.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// The longest category name, in bytes.
pub const MAX_CATEGORY_LEN: usize = 64;
/// The longest instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 255;

/// The kind of aggregate a stream belongs to, such as `order`.
///
/// A category is 1 to [`MAX_CATEGORY_LEN`] bytes of ASCII letters, digits, `_`, `-` and `.`,
/// so it can be used in filters, logs and table names without quoting surprises.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Category(String);

impl Category {
    /// Checks and wraps a category name.
    ///
    /// ```
    /// use eventsource_core::Category;
    /// assert!(Category::new("order").is_ok());
    /// assert!(Category::new("").is_err());
    /// assert!(Category::new("or der").is_err());
    /// ```
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ValidationError::EmptyCategory);
        }
        if name.len() > MAX_CATEGORY_LEN {
            return Err(ValidationError::CategoryTooLong {
                len: name.len(),
                max: MAX_CATEGORY_LEN,
            });
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(ValidationError::CategoryCharacter {
                category: name,
                character: bad,
            });
        }
        Ok(Self(name))
    }

    /// Wraps a name without checking it (for constants such as `Aggregate::CATEGORY`, whose
    /// misuse every stream id built from them reports anyway).
    pub(crate) fn unchecked(name: &str) -> Self {
        Self(name.to_owned())
    }

    /// The category name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Category {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Category> for String {
    fn from(value: Category) -> Self {
        value.0
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifies one stream: the events of one aggregate instance.
///
/// The instance id is 1 to [`MAX_INSTANCE_ID_LEN`] bytes of UTF-8 without control characters
/// (PostgreSQL text cannot hold NUL, and control characters make ids unreadable in logs).
///
/// ```
/// use eventsource_core::StreamId;
/// let id = StreamId::new("order", "8f3c")?;
/// assert_eq!(id.to_string(), "order-8f3c");
/// assert!(StreamId::new("order", "").is_err());
/// # Ok::<(), eventsource_core::ValidationError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    category: Category,
    id: String,
}

impl StreamId {
    /// Checks and builds a stream id from a category name and an instance id.
    pub fn new(
        category: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Self, ValidationError> {
        Self::from_parts(Category::new(category)?, id)
    }

    /// Builds a stream id from an already checked category.
    pub fn from_parts(category: Category, id: impl Into<String>) -> Result<Self, ValidationError> {
        let id = id.into();
        if id.is_empty() {
            return Err(ValidationError::EmptyStreamId);
        }
        if id.len() > MAX_INSTANCE_ID_LEN {
            return Err(ValidationError::StreamIdTooLong {
                len: id.len(),
                max: MAX_INSTANCE_ID_LEN,
            });
        }
        if id.chars().any(char::is_control) {
            return Err(ValidationError::StreamIdControlCharacter);
        }
        Ok(Self { category, id })
    }

    /// The aggregate category.
    pub fn category(&self) -> &Category {
        &self.category
    }

    /// The instance id within the category.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.category, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_ids() {
        assert_eq!(
            StreamId::new("order", ""),
            Err(ValidationError::EmptyStreamId)
        );
        assert!(matches!(
            StreamId::new("order", "x".repeat(256)),
            Err(ValidationError::StreamIdTooLong { len: 256, .. })
        ));
        assert!(StreamId::new("order", "x".repeat(255)).is_ok());
        assert_eq!(
            StreamId::new("order", "a\0b"),
            Err(ValidationError::StreamIdControlCharacter)
        );
        assert!(matches!(
            StreamId::new("", "a"),
            Err(ValidationError::EmptyCategory)
        ));
        assert!(StreamId::new("Ordér", "a").is_err());
        assert!(StreamId::new("order", "注文-1").is_ok());
    }
}
