"""Forms for logging in and for editing the session's own data."""

from __future__ import annotations

import json

from django import forms
from django.contrib.auth.forms import AuthenticationForm


class LoginForm(AuthenticationForm):
    """Django's `AuthenticationForm` (username, password) plus "Keep me signed in"."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Invalid username or password.",
    }
    remember = forms.BooleanField(required=False, label="Keep me signed in")


class SessionKeyForm(forms.Form):
    """A key of the session's own data; keys starting with "_" belong to Django and this app."""

    key = forms.CharField(max_length=100, strip=True)

    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if key.startswith("_"):
            raise forms.ValidationError('Keys starting with "_" are reserved.')
        return key


class SessionSetForm(SessionKeyForm):
    """Set one key to a JSON value: a string, number, list, object, true/false or null."""

    value = forms.CharField(
        max_length=10_000,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text='JSON, for example "john_doe", 1, [1, 2] or {"a": 1}.',
    )

    def clean_value(self):
        try:
            return json.loads(self.cleaned_data["value"])
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from None


class SessionExpiryForm(forms.Form):
    """Seconds until the session expires; 0 means when the browser closes."""

    seconds = forms.IntegerField(min_value=0, max_value=10 * 365 * 24 * 3600)
