from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.SessionLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("session/", views.session_data, name="session_data"),
    path("session/set/", views.session_set, name="session_set"),
    path("session/delete/", views.session_delete, name="session_delete"),
    path("session/clear/", views.session_clear, name="session_clear"),
    path("session/expiry/", views.session_expiry, name="session_expiry"),
]
